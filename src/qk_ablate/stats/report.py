"""The results table: rows = model x intervention, columns = tasks, contextual and
parametric means, their deltas to the baseline and the interaction, each with a 95% paired
bootstrap interval; written as markdown, CSV and HTML, with a bar chart of the deltas as PNG.
A task whose baseline is not distinguishable from chance or from a constant answer
(`qk_ablate.stats.baseline_signal`) is marked † in the header, named in a footnote with its p-value and
top answer share, and listed in the CSV's `no_signal` column; its deltas measure nothing, so it is
left out of its kind's mean and the interaction (`keep_no_signal` counts it), and the footnote says
which. Every intervention's row gets the same two tests: a task it brought down to chance or to one
answer is marked ‡ in that row and named in a footnote (its delta stands). Where a massive-destruction
run has its random control, the specificity section says whether
each kind's loss is specific to the massive dims (`stats/specificity.py`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from qk_ablate.errors import QKAblateError
from qk_ablate.stats.answer_prior import AnswerPrior, answer_priors
from qk_ablate.stats.answer_prior import to_csv_rows as answer_rows
from qk_ablate.stats.answer_prior import to_markdown as answer_markdown
from qk_ablate.stats.baseline_signal import MARK, ROW_MARK, Signal, assess
from qk_ablate.stats.compare import DEFAULT_ITERATIONS, Comparison, Estimate, compare
from qk_ablate.stats.page import Provenance, heatmaps_beside, to_page
from qk_ablate.stats.runs import Run, merge_runs
from qk_ablate.stats.seeds import pooled_run, seed_groups
from qk_ablate.stats.specificity import Specificity, find_specificity
from qk_ablate.stats.specificity import to_markdown as specificity_markdown
from qk_ablate.task_data.catalogue import KINDS, task_chance, task_kind


@dataclass(frozen=True)
class Report:
    tasks: list[str]
    rows: list[tuple[Run, Comparison]]  # each run against its model's baseline (the baseline too)
    signals: tuple[Signal, ...] = ()  # each baseline's tasks against chance and a constant answer
    specificity: tuple[Specificity, ...] = ()  # each massive run against its random control
    answers: tuple[AnswerPrior, ...] = ()  # each run's answer prior per task (where answers are readable)
    row_signals: tuple[Signal, ...] = ()  # each intervention row's tasks against chance and a constant answer
    kinds: dict[str, str | None] = field(default_factory=dict)  # each task's kind (--kinds, catalogue, YAML)

    def row_flags(self, run: Run) -> list[Signal]:
        """The flagged tasks of one intervention's row, in table order."""
        found = {s.task: s for s in self.row_signals if s.flagged and (s.model, s.label) == (run.model, run.label)}
        return [found[t] for t in self.tasks if t in found]

    @property
    def unclassified(self) -> list[str]:
        """Tasks counted in neither mean (no kind from the catalogue, --kinds or their YAML)."""
        return sorted({t for _, comparison in self.rows for t in comparison.unclassified})


def build_report(
    runs: list[Run],
    baseline: Run | None = None,
    kinds: dict[str, str] | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    only: list[str] | None = None,
    keep_no_signal: bool = False,
) -> Report:
    """Compare every run with the baseline of its model (`baseline`, or the model's run with no
    intervention), over the baselines' tasks (or just `only`). Runs of one model and intervention
    from several folders are merged first. A task whose baseline carries no signal is shown but left
    out of its kind's mean (`keep_no_signal`: counted all the same)."""
    if not runs:
        raise QKAblateError("no runs to report; give one or more lm_eval --output_path folders")
    runs = merge_runs(runs)
    baselines: dict[str, Run] = {}
    if baseline is not None:
        baselines = {run.model: baseline for run in [*runs, baseline]}  # it may be another model's run
    else:
        for run in runs:
            if run.is_baseline:
                if run.model in baselines:
                    raise QKAblateError(
                        f"two baseline runs of {run.model} ('{baselines[run.model].path}', '{run.path}'); "
                        "name the one to compare against with --baseline"
                    )
                baselines[run.model] = run
    missing = sorted({run.model for run in runs} - set(baselines))
    if missing:
        raise QKAblateError(
            f"no baseline (ablate=none, quant=none) run for {', '.join(missing)}; add one, or name it with --baseline"
        )
    declared = {t: k for b in baselines.values() for t, k in b.kinds.items()}
    resolved = {t: task_kind(t, kinds, declared) for b in baselines.values() for t in b.tasks}
    tasks = sorted(resolved, key=lambda t: (_kind_order(resolved[t]), t))
    if only is not None:
        unknown = sorted(set(only) - set(tasks))
        if unknown:
            raise QKAblateError(f"--tasks names {unknown[0]}, which no baseline run has; it has {', '.join(tasks)}")
        tasks = [t for t in tasks if t in only]
    signals = tuple(
        assess(
            t,
            b.model,
            b.tasks[t].scores,
            b.tasks[t].answers,
            _chance(b, t),
            resolved[t],
            counted=keep_no_signal,
        )
        for b in {id(b): b for b in baselines.values()}.values()
        for t in tasks
        if t in b.tasks
    )
    flagged: dict[str, set[str]] = {s.model: set() for s in signals}
    for signal in signals:
        if signal.flagged and not keep_no_signal:
            flagged[signal.model].add(signal.task)

    def leave_out(model: str) -> tuple[str, ...]:
        return tuple(sorted(flagged.get(baselines[model].model, set())))

    rows = []
    ordered = sorted(runs, key=lambda r: (r.model, not r.is_baseline))
    if baseline is not None and all(r.path != baseline.path for r in runs):
        ordered.insert(0, baseline)
    for run in ordered:
        base = baselines[run.model]
        names = [t for t in tasks if t in base.tasks]
        rows.append(
            (run, compare(base, run, names, kinds=kinds, iterations=iterations, leave_out=leave_out(run.model)))
        )
    for group in seed_groups(ordered):  # one pooled row after each group of seeds, resampling seeds and documents
        pooled, base = pooled_run(group), baselines[group[0].model]
        names = [t for t in tasks if t in base.tasks and t in pooled.tasks]
        at = max(i for i, (run, _) in enumerate(rows) if any(run is g for g in group)) + 1
        left = leave_out(pooled.model)
        comparison = compare(base, pooled, names, kinds=kinds, iterations=iterations, replicates=group, leave_out=left)
        rows.insert(at, (pooled, comparison))
    specific = tuple(find_specificity(runs, tasks, kinds=kinds, iterations=iterations, leave_out=leave_out))
    priors = tuple(answer_priors(ordered, tasks))
    tested = tuple(
        assess(t, run.model, run.tasks[t].scores, run.tasks[t].answers, _chance(run, t), label=run.label)
        for run in ordered
        if run is not baselines[run.model]
        for t in tasks
        if t in run.tasks
    )
    return Report(
        tasks=tasks,
        rows=rows,
        signals=signals,
        specificity=specific,
        answers=priors,
        row_signals=tested,
        kinds={t: resolved[t] for t in tasks},
    )


def _chance(run: Run, task: str) -> float | None:
    return task_chance(task, run.chances, run.tasks[task].choice_chance)


def _no_signal(report: Report, model: str | None = None) -> list[str]:
    """The tasks flagged in some baseline (of `model`, when given), in table order."""
    flagged = {s.task for s in report.signals if s.flagged and model in (None, s.model)}
    return [t for t in report.tasks if t in flagged]


def _names(report: Report) -> list[str]:
    flagged = set(_no_signal(report))
    return [f"{t} {MARK}" if t in flagged else t for t in report.tasks]


def _signal_note(report: Report) -> str:
    """One footnote line per flagged baseline task (which test it fails, its p-value, its top answer
    share), then one per intervention row with tasks it brought to chance or to one answer."""
    lines = [f"{MARK} {s.sentence()}." for s in report.signals if s.flagged]
    for run, comparison in report.rows:
        flags = [] if _is_reference(run, comparison) else report.row_flags(run)
        if flags:
            named = "; ".join(f"{s.task} {s.failures()}" for s in flags)
            lines.append(f"{ROW_MARK} {run.model}, {run.label}: {named} (the row's delta stands).")
    return "\n".join(lines)


def _is_reference(run: Run, comparison: Comparison) -> bool:
    """The baseline's own row (compared with itself): it has means but no deltas."""
    return run.is_baseline and comparison.baseline.path == run.path


def _kind_order(kind: str | None) -> int:
    return {"contextual": 0, "parametric": 1}.get(kind or "", 2)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _delta(e: Estimate) -> str:
    return f"{100 * e.value:+.1f} [{100 * e.low:+.1f}, {100 * e.high:+.1f}]"


def _cells(report: Report, run: Run, comparison: Comparison) -> list[str]:
    base, tasks = _is_reference(run, comparison), report.tasks
    flagged = set() if base else {s.task for s in report.row_flags(run)}
    cells = [run.model, run.label]
    for task in tasks:
        if task not in run.tasks or task not in comparison.tasks:
            cells.append("n/a")
            continue
        score = _pct(run.tasks[task].mean) + (f" {ROW_MARK}" if task in flagged else "")
        cells.append(score if base else f"{score} ({_delta(comparison.tasks[task])})")
    for kind in KINDS:
        mean = comparison.means.get(kind)
        cells.append("n/a" if mean is None else f"{_pct(mean.value)} [{_pct(mean.low)}, {_pct(mean.high)}]")
        delta = comparison.deltas.get(kind)
        cells.append("" if base or delta is None else _delta(delta))
    inter = comparison.interaction
    cells.append("" if base or inter is None else _delta(inter))
    return cells


def header(tasks: list[str]) -> list[str]:
    return ["model", "intervention", *tasks, "contextual", "Δ contextual", "parametric", "Δ parametric", "interaction"]


def _footnote(report: Report) -> str:
    docs = report.rows[0][1].docs
    return (
        "accuracy in %; (change vs the model's baseline in points [95% paired bootstrap interval]); "
        "means pool each kind's documents; interaction = Δ contextual − Δ parametric. Documents: "
        + ", ".join(f"{t} {n}" for t, n in docs.items())
    )


def to_markdown(report: Report) -> str:
    head = header(_names(report))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for run, comparison in report.rows:
        lines.append("| " + " | ".join(_cells(report, run, comparison)) + " |")
    lines.append("\n" + _footnote(report))
    if _signal_note(report):
        lines.append("\n" + _signal_note(report).replace("\n", "\n\n"))
    if report.specificity:
        lines.append("\n" + specificity_markdown(list(report.specificity)))
    if answer_markdown(list(report.answers)):
        lines.append("\n" + answer_markdown(list(report.answers)))
    return "\n".join(lines)


def to_html(
    report: Report, chart: Path | None = None, heatmaps: list[Path] | None = None, provenance: Provenance | None = None
) -> str:
    """The page a team can publish (`stats/page.py`): the sortable table, its footnotes, the chart and
    heatmaps inline, the documents behind every changed cell, and what made it."""
    models = ", ".join(sorted({run.model for run, _ in report.rows}))
    notes = [_footnote(report), *_signal_note(report).splitlines()]
    sections = [specificity_markdown(list(report.specificity))] if report.specificity else []
    if answer_markdown(list(report.answers)):
        sections.append(answer_markdown(list(report.answers)))
    return to_page(
        report,
        flagged=set(_no_signal(report)),
        title=f"qk-ablate report: {models}",
        chart=chart,
        heatmaps=heatmaps,
        provenance=provenance,
        notes=[line for line in notes if line],
        preformatted="\n\n".join(sections) or None,
    )


def to_csv(report: Report) -> str:
    """One row per run; numbers in %, each delta with its interval bounds in their own columns."""
    out = io.StringIO()
    writer = csv.writer(out)
    columns = ["model", "intervention"]
    for task in report.tasks:
        columns += [task, f"{task}_delta", f"{task}_delta_low", f"{task}_delta_high"]
    for kind in KINDS:
        columns += [kind, f"{kind}_low", f"{kind}_high", f"{kind}_delta", f"{kind}_delta_low", f"{kind}_delta_high"]
    columns += ["interaction", "interaction_low", "interaction_high", "no_signal", "row_no_signal"]
    writer.writerow(columns)

    def nums(e: Estimate | None) -> list[str]:
        return ["", "", ""] if e is None else [f"{100 * e.value:.2f}", f"{100 * e.low:.2f}", f"{100 * e.high:.2f}"]

    for run, cmp in report.rows:
        row = [run.model, run.label]
        for task in report.tasks:
            row += [f"{100 * run.tasks[task].mean:.2f}" if task in run.tasks else "", *nums(cmp.tasks.get(task))]
        for kind in KINDS:
            row += nums(cmp.means.get(kind)) + nums(cmp.deltas.get(kind))
        row += nums(cmp.interaction)
        row.append(";".join(_no_signal(report, cmp.baseline.model)))  # tasks whose baseline is flagged
        row.append("" if _is_reference(run, cmp) else ";".join(s.task for s in report.row_flags(run)))
        writer.writerow(row)
    return out.getvalue()


def plot_deltas(report: Report, path: str | Path) -> Path:
    """Bar chart: Δ contextual and Δ parametric of every non-baseline run, with their intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [(run, cmp) for run, cmp in report.rows if not _is_reference(run, cmp)]
    if not rows:
        raise QKAblateError("the report has no run besides the baseline, so there are no deltas to plot")
    several = len({r.model for r, _ in rows}) > 1
    # one argument per line, so long labels (quant=int4,quant_targets=qk,...) never overlap
    labels = [(f"{run.model}\n" if several else "") + run.label.replace(",", "\n") for run, _ in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(rows)), 4.6))
    for offset, kind, colour in ((-0.2, "contextual", "#c0392b"), (0.2, "parametric", "#2471a3")):
        est = [cmp.deltas.get(kind) for _, cmp in rows]
        values = [100 * e.value if e else np.nan for e in est]
        errors = [
            [100 * (e.value - e.low) if e else 0 for e in est],
            [100 * (e.high - e.value) if e else 0 for e in est],
        ]
        bars = ax.bar(x + offset, values, 0.4, yerr=errors, capsize=4, color=colour, label=f"Δ {kind}")
        # every bar gets its value, so a zero-height bar (no change) is still seen and read
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:+.1f}" for v in values], fontsize=7, padding=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("change vs baseline (points)")
    models = ", ".join(sorted({run.model for run, _ in rows}))
    documents = ", ".join(f"{task} {n}" for task, n in report.rows[0][1].docs.items())
    ax.set_title(
        f"Δ accuracy vs baseline, 95% paired bootstrap intervals\n{models}; documents: {documents}", fontsize=9
    )
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_report(
    report: Report, folder: str | Path, name: str = "report", provenance: Provenance | None = None
) -> list[Path]:
    """report.md, report.csv, report.html, report_deltas.png (when there are deltas) and report_answers.csv
    (when the samples hold answers) in `folder`."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    chart = None
    if any(not _is_reference(run, cmp) for run, cmp in report.rows):
        chart = plot_deltas(report, out / f"{name}_deltas.png")
    page = to_html(report, chart, heatmaps_beside(report), provenance or Provenance.here())
    pages = (("md", to_markdown(report) + "\n"), ("csv", to_csv(report)), ("html", page))
    for suffix, text in pages:
        path = out / f"{name}.{suffix}"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    if report.answers:  # per run and task: the most frequent answer, its share, the entropy, the flag
        buffer = io.StringIO()
        csv.writer(buffer).writerows(answer_rows(list(report.answers)))
        path = out / f"{name}_answers.csv"
        path.write_text(buffer.getvalue(), encoding="utf-8")
        written.append(path)
    return written + ([chart] if chart else [])
