"""Controls over many seeds: a sweep's `seeds: 0-4` and the report's pooled row.

A random selection (the non-massive control, a band) is one draw of dims; how much it costs can
depend on the draw as much as on the documents. A sweep expands `seeds:` into one cell per seed,
and the report adds one pooled row per group of runs that differ only by their seed: its scores
are the seeds' mean, and its interval resamples seeds and documents (`compare(replicates=...)`).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from qk_ablate.core.spec import InterventionSpec
from qk_ablate.errors import QKAblateError
from qk_ablate.stats.runs import Run, TaskScores

POOLED = "pooled"


def parse_seeds(value: Any) -> list[int]:
    """`0-4`, `0;2;5`, `[0, 2, 5]` or one number -> the seeds, in order, without repeats."""
    if isinstance(value, bool):
        raise QKAblateError(f"seeds: {value!r} is not valid; give a range 0-4 or a list [0, 1, 2]")
    if isinstance(value, int):
        items: list[Any] = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [p for p in re.split(r"[;,\s]+", str(value).strip()) if p]
    seeds: list[int] = []
    for item in items:
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", str(item).strip())
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise QKAblateError(f"seeds: {value!r} is not valid; give a range 0-4 or a list [0, 1, 2] of whole numbers")
        start = int(match.group(1))
        stop = int(match.group(2)) if match.group(2) else start
        seeds += [s for s in range(start, stop + 1) if s not in seeds]
    if len(seeds) < 2:
        raise QKAblateError(f"seeds: {value!r} names {len(seeds)} seed; pooling needs at least two, e.g. seeds: 0-4")
    return seeds


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """Groups of two or more runs of one model whose interventions differ only in `seed`."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        if run.is_baseline or str(run.intervention.get("seed", "")).startswith(POOLED):
            continue
        rest = {k: v for k, v in run.intervention.items() if k != "seed"}
        groups.setdefault((run.model, json.dumps(rest, sort_keys=True, default=str)), []).append(run)
    return [group for group in groups.values() if len({r.intervention.get("seed") for r in group}) >= 2]


def pooled_run(group: list[Run]) -> Run:
    """One run standing for `group`: per document, the mean score over its seeds."""
    first = group[0]
    seeds = sorted(int(r.intervention.get("seed", 0)) for r in group)
    label = f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ";".join(map(str, seeds))
    tasks = {}
    for task, scores in first.tasks.items():
        members = [m for r in group if (m := r.tasks.get(task)) is not None and m.doc_ids == scores.doc_ids]
        if len(members) < len(group):
            continue  # a task not scored on the same documents by every seed is not pooled
        mean = np.mean([m.scores for m in members], axis=0)
        tasks[task] = TaskScores(task, scores.metric, scores.doc_ids, scores.doc_hashes, mean)
    if not tasks:
        raise QKAblateError(f"the seeds of {first.model} / {first.label} share no task scored on the same documents")
    intervention = {**first.intervention, "seed": f"{POOLED} {label}"}
    return Run(path=first.path, model=first.model, intervention=intervention, tasks=tasks, kinds=dict(first.kinds))


def expand_seeds(name: str, args: dict[str, Any]) -> dict[str, InterventionSpec]:
    """`{name: spec}`, or with `seeds:` one cell per seed, `<name>_seed<N>` (the report pools them)."""
    if "seeds" not in args:
        return {name: InterventionSpec.from_args(args)}
    seeds = parse_seeds(args.pop("seeds"))
    if "seed" in args:
        raise QKAblateError("give either seed or seeds, not both")
    spec = InterventionSpec.from_args(args)
    if not (spec.select == "band" or (spec.ablate == "nonmassive" and spec.control == "random")):
        raise QKAblateError(
            "seeds only change a random draw of dims: use them with ablate=nonmassive (control=random) or select=band"
        )
    return {f"{name}_seed{seed}": InterventionSpec.from_args({**args, "seed": seed}) for seed in seeds}
