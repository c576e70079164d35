"""Is a loss specific to the massive dims? Massive destruction against its own random control.

A drop under `ablate=massive` says something about the massive dims only if destroying as many
other dims (`ablate=nonmassive`, the random control) costs less. Each massive-destruction run is
matched with the control runs of the same model whose intervention differs only in `ablate` and
`seed`; the difference massive − control is taken per task and per kind (a kind pools its tasks'
documents, as the report's means do), paired per document. Its 95% interval resamples documents
and, with two or more control seeds, the seeds too (`compare` with the seeds as replicates). A
kind's loss is specific to the massive dims at 95% when that interval lies below zero.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from qk_ablate.stats.compare import DEFAULT_ITERATIONS, Comparison, Estimate, compare
from qk_ablate.stats.runs import Run, describe
from qk_ablate.stats.seeds import POOLED, pooled_run
from qk_ablate.task_data.catalogue import KINDS

IGNORED = ("ablate", "seed")  # what may differ between a massive run and its control


@dataclass(frozen=True)
class Specificity:
    """One massive-destruction run against its pooled random control."""

    massive: Run
    control: Run  # the control's runs pooled per document (or the one run)
    seeds: tuple[int, ...]
    comparison: Comparison  # control against massive: its deltas are control − massive

    def difference(self, key: str) -> Estimate | None:
        """massive − control for a kind (`contextual`, `parametric`) or a task, in fractions."""
        found = self.comparison.deltas.get(key) or self.comparison.tasks.get(key)
        return None if found is None else Estimate(-found.value, -found.high, -found.low)

    def specific(self, kind: str) -> bool | None:
        """The kind's loss is larger under massive destruction than under the control, at 95%."""
        difference = self.difference(kind)
        return None if difference is None else difference.high < 0

    @property
    def control_label(self) -> str:
        """The control's intervention without its seed, then the seeds it pools."""
        rest = describe({k: v for k, v in self.control.intervention.items() if k != "seed"})
        return f"{rest} (seed{'s' if len(self.seeds) > 1 else ''} {', '.join(map(str, self.seeds))})"


def _key(run: Run) -> str:
    rest = {k: v for k, v in run.intervention.items() if k not in IGNORED}
    return json.dumps([run.model, rest], sort_keys=True, default=str)


def find_specificity(
    runs: list[Run],
    tasks: list[str],
    kinds: dict[str, str] | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    leave_out: Callable[[str], tuple[str, ...]] | None = None,
) -> list[Specificity]:
    """Every massive run of `runs` that has a random control, against that control, over `tasks`
    (`leave_out(model)`: tasks kept out of the kind means, as the report keeps them)."""
    single = [r for r in runs if not str(r.intervention.get("seed", "")).startswith(POOLED)]
    controls: dict[str, list[Run]] = {}
    for run in single:
        spec = run.intervention
        if spec.get("ablate") == "nonmassive" and spec.get("control", "random") == "random":
            controls.setdefault(_key(run), []).append(run)
    found = []
    for run in single:
        group = controls.get(_key(run))
        if run.intervention.get("ablate") != "massive" or not group:
            continue
        group = sorted(group, key=lambda r: int(r.intervention.get("seed", 0)))
        control = pooled_run(group) if len(group) > 1 else group[0]
        names = [t for t in tasks if t in run.tasks and t in control.tasks]
        if not names:
            continue
        replicates = group if len(group) > 1 else None
        left = leave_out(run.model) if leave_out else ()
        comparison = compare(
            run, control, names, kinds=kinds, iterations=iterations, replicates=replicates, leave_out=left
        )
        seeds = tuple(int(r.intervention.get("seed", 0)) for r in group)
        found.append(Specificity(run, control, seeds, comparison))
    return found


def _cell(item: Specificity, kind: str) -> str:
    difference = item.difference(kind)
    if difference is None:
        return "n/a"
    verdict = "specific" if difference.high < 0 else "not shown"
    return f"{100 * difference.value:+.1f} [{100 * difference.low:+.1f}, {100 * difference.high:+.1f}]: {verdict}"


def claims(items: list[Specificity]) -> list[str]:
    """One sentence per model and kind: whether its loss is specific to the massive dims at 95%."""
    lines = []
    for item in items:
        for kind in KINDS:
            specific = item.specific(kind)
            if specific is None:
                continue
            answer = "yes" if specific else "no"
            lines.append(
                f"{item.massive.model}, {item.massive.label}: {kind} loss specific to the massive dims "
                f"(against {item.control_label}): {answer} at 95%"
            )
    return lines


def to_markdown(items: list[Specificity]) -> str:
    """The specificity table and the claims it supports (empty when no massive run has a control)."""
    if not items:
        return ""
    lines = [
        "Specificity: massive destruction minus its random non-massive control, in points "
        "[95% interval over documents and control seeds]; 'specific' when the interval lies below zero.",
        "",
        "| model | massive | control | " + " | ".join(f"{kind}: massive − control" for kind in KINDS) + " |",
        "|---|---|---|" + "---:|" * len(KINDS),
    ]
    for item in items:
        cells = [item.massive.model, item.massive.label, item.control_label, *(_cell(item, k) for k in KINDS)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"- {line}." for line in claims(items))]
    return "\n".join(lines)
