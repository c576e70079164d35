"""Paired comparison of two runs: per-task deltas, contextual and parametric means, and their
interaction, each with a 95% paired bootstrap interval.

Documents are paired by task and document id, and must be the same documents (lm-eval's
`doc_hash`) in both runs: a mismatch is an error, never a silent unpaired comparison. Each
bootstrap replicate resamples every task's documents with replacement (the same draw for both
runs, hence paired); a kind's mean pools its tasks' documents (size-weighted, as our lm-eval
groups are), and the interaction is the contextual delta minus the parametric delta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qk_ablate.errors import QKAblateError
from qk_ablate.stats.runs import Run
from qk_ablate.task_data.catalogue import KINDS, task_kind

DEFAULT_ITERATIONS = 10_000  # bootstrap replicates of report, gate and sweep


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95% bootstrap interval (fractions, not percent)."""

    value: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class Comparison:
    baseline: Run
    candidate: Run
    tasks: dict[str, Estimate]  # candidate - baseline, per task
    means: dict[str, Estimate]  # candidate's kind means (not deltas)
    deltas: dict[str, Estimate]  # candidate - baseline, per kind
    interaction: Estimate | None  # contextual delta - parametric delta
    docs: dict[str, int]
    unclassified: tuple[str, ...] = ()  # tasks in neither mean: no kind in the catalogue, --kinds or YAML
    left_out: tuple[str, ...] = ()  # tasks shown but kept out of their kind's mean (no signal at baseline)


def _paired_scores(baseline: Run, candidate: Run, tasks: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    pairs = {}
    for task in tasks:
        if task not in candidate.tasks:
            raise QKAblateError(f"task {task} is in the baseline '{baseline.path}' but not in '{candidate.path}'")
        a, b = baseline.tasks[task], candidate.tasks[task]
        if a.doc_ids != b.doc_ids:
            raise QKAblateError(
                f"task {task}: the runs scored different documents ({len(a.doc_ids)} in '{baseline.path}', "
                f"{len(b.doc_ids)} in '{candidate.path}'); rerun both with the same --limit, num_docs and task_seed"
            )
        differ = sum(x != y for x, y in zip(a.doc_hashes, b.doc_hashes))
        if differ:
            raise QKAblateError(
                f"task {task}: {differ} of {len(a.doc_ids)} documents differ between '{baseline.path}' and "
                f"'{candidate.path}' (same ids, other text); they cannot be paired: rebuild both with the same task settings"
            )
        pairs[task] = (a.scores, b.scores)
    return pairs


def compare(
    baseline: Run,
    candidate: Run,
    tasks: list[str] | None = None,
    kinds: dict[str, str] | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    seed: int = 0,
    replicates: list[Run] | None = None,
    leave_out: tuple[str, ...] = (),
) -> Comparison:
    """Paired bootstrap of `candidate` against `baseline` over `tasks` (default: all of the baseline's).

    `leave_out`: tasks compared on their own but counted in no kind's mean (and so not in the interaction).

    `replicates`: the runs `candidate` pools (one per seed of a random selection; `candidate`'s
    scores are their mean). Each replicate then resamples the seeds too, with replacement and the
    same draw for every task, on top of the documents: the interval holds both sources of spread.
    """
    names = sorted(baseline.tasks) if tasks is None else list(tasks)
    if not names:
        raise QKAblateError(f"the baseline '{baseline.path}' has no tasks to compare")
    for task in names:
        if task not in baseline.tasks:
            raise QKAblateError(f"task {task} is not in the baseline '{baseline.path}'")
    pairs = _paired_scores(baseline, candidate, names)
    seeded = [_paired_scores(baseline, run, names) for run in replicates or []]
    rng = np.random.default_rng(seed)
    # Per task: [iterations] resampled means of both runs (one shared draw of documents).
    boot: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    seed_draw = rng.integers(0, len(seeded), size=(iterations, len(seeded))) if seeded else None
    for task in names:
        a, b = pairs[task]
        draw = rng.integers(0, len(a), size=(iterations, len(a)))
        if seed_draw is None:
            resampled = b[draw].mean(axis=1)
        else:
            by_seed = np.stack([p[task][1][draw].mean(axis=1) for p in seeded])  # [seeds, iterations]
            resampled = by_seed[seed_draw, np.arange(iterations)[:, None]].mean(axis=1)
        boot[task] = (a[draw].mean(axis=1), resampled)

    def estimate(point: float, samples: np.ndarray) -> Estimate:
        low, high = np.percentile(samples, [2.5, 97.5])
        return Estimate(float(point), float(low), float(high))

    task_estimates = {t: estimate(pairs[t][1].mean() - pairs[t][0].mean(), boot[t][1] - boot[t][0]) for t in names}
    declared = {**candidate.kinds, **baseline.kinds}
    kind_of = {t: None if t in leave_out else task_kind(t, kinds, declared) for t in names}
    means, deltas, kind_boot = {}, {}, {}
    for kind in KINDS:
        members = [t for t in names if kind_of[t] == kind]
        if not members:
            continue
        sizes = np.array([len(pairs[t][0]) for t in members], dtype=np.float64)
        weights = sizes / sizes.sum()
        point_a = float(sum(w * pairs[t][0].mean() for w, t in zip(weights, members)))
        point_b = float(sum(w * pairs[t][1].mean() for w, t in zip(weights, members)))
        boot_a = sum(w * boot[t][0] for w, t in zip(weights, members))
        boot_b = sum(w * boot[t][1] for w, t in zip(weights, members))
        means[kind] = estimate(point_b, boot_b)
        deltas[kind] = estimate(point_b - point_a, boot_b - boot_a)
        kind_boot[kind] = boot_b - boot_a
    interaction = None
    if set(KINDS) <= set(deltas):
        interaction = estimate(
            deltas["contextual"].value - deltas["parametric"].value, kind_boot["contextual"] - kind_boot["parametric"]
        )
    return Comparison(
        baseline=baseline,
        candidate=candidate,
        tasks=task_estimates,
        means=means,
        deltas=deltas,
        interaction=interaction,
        docs={t: len(pairs[t][0]) for t in names},
        unclassified=tuple(t for t in names if kind_of[t] is None and t not in leave_out),
        left_out=tuple(t for t in names if t in leave_out),
    )
