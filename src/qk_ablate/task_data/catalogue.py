"""The task catalogue: every task qk-ablate ships, its family, its kind and its lengths, and the groups.

Reports, the gate, sweeps, the CLI and the tests read task kinds and names from here, and a test
checks that the YAMLs in `tasks/` (tasks and groups) are exactly what this catalogue says. A
user's own task is classified by a `--kinds` entry, or by `kind: contextual|parametric` in its
YAML's `metadata` (recorded in the results file), so no flag is needed.

Each family also names its chance level (`chance`): the accuracy of a blind guess (0.5 for a
two-way choice, 1/6 for a continent, 0 for an open answer), which `report` tests each baseline
against; a user's task may declare `chance: <0..1>` in its YAML `metadata` the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data.lengths import LENGTHS, parse_length

KINDS: tuple[str, ...] = ("contextual", "parametric")


@dataclass(frozen=True)
class Family:
    """Tasks of one kind built the same way: `name_<len>` for every length, or one task `name`."""

    name: str
    kind: str
    lengths: bool = False
    group: str | None = None  # the group reporting every length as a row
    shipped: bool = True  # False: lm-eval's own task, run with qk_ablated but not ours
    chance: float | None = 0.0  # a blind guess's accuracy (0: an open answer); None: unknown

    def tasks(self) -> list[str]:
        return [f"{self.name}_{length}" for length in LENGTHS] if self.lengths else [self.name]


FAMILIES: tuple[Family, ...] = (
    Family("passkey", "contextual", lengths=True, group="qk_passkey"),  # lm-eval owns `passkey`
    Family("niah", "contextual", lengths=True, group="niah"),
    Family("niah_multikey", "contextual", lengths=True, group="niah_multikey"),
    Family("niah_essay", "contextual", lengths=True, group="niah_essay"),
    Family("ctxqa", "contextual", lengths=True, group="ctxqa"),
    Family("imdb", "contextual", chance=0.5),
    Family("qk_gsm8k", "contextual"),
    Family("gsm8k", "contextual", shipped=False),
    Family("city_facts", "parametric"),
    Family("city_facts_tf", "parametric", chance=0.5),
    Family("city_facts_tf_gen", "parametric", chance=0.5),
    Family("country_capital", "parametric"),
    Family("country_continent", "parametric", chance=1 / 6),  # six inhabited continents
    # the recall prompts without their 3-shot prefix (results/format_vs_fact; not in the groups)
    Family("city_facts_0shot", "parametric"),
    Family("country_capital_0shot", "parametric"),
    Family("country_continent_0shot", "parametric", chance=1 / 6),
)

# Lengths in the aggregate groups: up to the embedded model's 8k window; longer ones by name.
GROUP_LENGTHS: tuple[str, ...] = ("1k", "2k", "4k", "8k")


def _family(name: str) -> Family:
    return next(f for f in FAMILIES if f.name == name)


GROUPS: dict[str, list[str]] = {
    "qk_contextual": [
        f"{family}_{n}" for family in ("passkey", "niah", "niah_multikey", "ctxqa") for n in GROUP_LENGTHS
    ]
    + ["imdb"],  # niah_essay needs essays or the Hub; gsm8k's 1,319 long answers would dominate the mean
    "qk_parametric": [
        "city_facts",
        "city_facts_tf",
        "country_capital",
        "country_continent",
    ],  # tf_gen: the authors' form, beside
    "qk_knowledge": ["qk_contextual", "qk_parametric"],
    **{f.group: f.tasks() for f in FAMILIES if f.group},
}

# The length families whose prompts `qk-ablate profile` can read.
PROFILE_SOURCES: tuple[str, ...] = ("ctxqa", "passkey", "niah")


def task_length(task: str) -> int | None:
    """The prompt size in tokens of one of our exact-length tasks (`niah_16k` -> 16384); None otherwise."""
    for family in FAMILIES:
        if family.lengths and task.startswith(f"{family.name}_") and task in family.tasks():
            return parse_length(task[len(family.name) + 1 :])
    return None


def tasks(shipped_only: bool = False) -> list[str]:
    """Every task name of the catalogue, in catalogue order."""
    return [t for f in FAMILIES if f.shipped or not shipped_only for t in f.tasks()]


_KIND_OF = {task: family.kind for family in FAMILIES for task in family.tasks()}


def task_kind(
    task: str, overrides: Mapping[str, str] | None = None, declared: Mapping[str, str | None] | None = None
) -> str | None:
    """'contextual', 'parametric', or None for a task outside both means.

    A user's `overrides` (`--kinds`) win, then the catalogue, then what the task declared in its
    YAML metadata (`declared`, read from the results file). The catalogue comes before what was
    declared because lm-eval lets `--metadata '{"kind": ...}'` set `kind` for every task of a run,
    ours included.
    """
    if overrides and task in overrides:
        return overrides[task]
    return _KIND_OF.get(task) or (declared or {}).get(task)


_CHANCE_OF = {task: family.chance for family in FAMILIES for task in family.tasks()}


def task_chance(task: str, declared: Mapping[str, float] | None = None, choices: float | None = None) -> float | None:
    """The accuracy of a blind guess at `task`: the catalogue's, else what its YAML metadata
    declared (`chance:`), else for a multiple-choice task one over its number of choices (`choices`:
    read from its samples), else None (unknown: no test against chance)."""
    if task in _CHANCE_OF:
        return _CHANCE_OF[task]
    found = (declared or {}).get(task)
    return choices if found is None else found


def check_chance(task: str, chance: object, where: str) -> float:
    """`chance` as a number from 0 to 1, or one error line naming `where` it came from."""
    try:
        value = float(chance)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(chance, bool) or not 0.0 <= value <= 1.0:
        raise QKAblateError(f"{where}: the chance level of {task} must be a number from 0 to 1, got {chance!r}")
    return value


def check_kind(task: str, kind: object, where: str) -> str:
    """`kind` as a valid kind name, or one error line naming `where` it came from."""
    if kind not in KINDS:
        raise QKAblateError(f"{where}: the kind of {task} must be contextual or parametric, got {kind!r}")
    return str(kind)


def parse_kinds(text: str | None) -> dict[str, str]:
    """`my_facts=parametric,my_niah=contextual` (the `--kinds` option) -> {task: kind}."""
    kinds = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        task, sep, kind = part.partition("=")
        if not sep or not task.strip() or kind.strip() not in KINDS:
            raise QKAblateError(f"--kinds entry '{part}' must be TASK=contextual or TASK=parametric")
        kinds[task.strip()] = kind.strip()
    return kinds
