"""The report as one self-contained static page a team can publish (`report.html`).

Everything is inline (styles, a few lines of script, the delta chart and any profile heatmaps as
base64 PNGs), so the file opens with no network. The table groups tasks by kind, marks tasks with
no signal at baseline (†) and rows at chance or at one answer (‡), shows each delta with its 95%
interval, and sorts by any column on a click (or on load from `#sort=<column>,<asc|desc>`, which
the browser test uses). Each changed cell links to the documents whose score changed against the
baseline, with both answers. A provenance block says what made it: command, versions, date, commit.
"""

from __future__ import annotations

import base64
import html
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from qk_ablate.stats.baseline_signal import MARK, ROW_MARK
from qk_ablate.stats.compare import Comparison, Estimate
from qk_ablate.stats.runs import Run, TaskScores
from qk_ablate.task_data.catalogue import KINDS, task_kind

CHANGED_SHOWN = 50  # documents listed per cell; the count says how many changed in all


@dataclass(frozen=True)
class Provenance:
    """What made the page: the command, the versions that ran it, when, and the git commit."""

    command: str
    versions: dict[str, str] = field(default_factory=dict)
    date: str = ""
    commit: str = ""

    @classmethod
    def here(cls, command: str | None = None) -> Provenance:
        from importlib.metadata import PackageNotFoundError, version

        versions = {}
        for name in ("qk-ablate", "lm_eval", "torch", "transformers"):
            try:
                versions[name] = version(name)
            except PackageNotFoundError:
                continue
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = ""
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return cls(command or " ".join(["qk-ablate", *sys.argv[1:]]), versions, stamp, commit)


def changed_documents(base: TaskScores, run: TaskScores) -> list[tuple[int, float, float, str, str]]:
    """(doc id, baseline score, run score, baseline answer, run answer) of every document, paired by
    its hash, whose score differs between the two runs."""
    position = {h: i for i, h in enumerate(base.doc_hashes)}
    out = []
    for j, doc_hash in enumerate(run.doc_hashes):
        i = position.get(doc_hash)
        if i is None or base.scores[i] == run.scores[j]:
            continue
        before = base.answers[i] if base.answers else None
        after = run.answers[j] if run.answers else None
        out.append(
            (
                run.doc_ids[j],
                float(base.scores[i]),
                float(run.scores[j]),
                before[0] if before else "",
                after[0] if after else "",
            )
        )
    return out


def heatmaps_beside(report: Any) -> list[Path]:
    """The post-RoPE Q and K heatmaps of each model's profile, where a sweep saved one beside its cells."""
    found: dict[Path, None] = {}
    for run, _ in report.rows:
        for name in ("heatmap_post_q.png", "heatmap_post_k.png"):
            path = Path(run.path).parent / "profile" / name
            if path.is_file():
                found[path] = None
    return list(found)


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def _cell(value: float | None, text: str, link: str | None = None) -> str:
    number = "" if value is None else f"{value:.6g}"
    body = html.escape(text)
    if link:
        body = f'<a href="#{link}">{body}</a>'
    return f'<td data-value="{number}">{body}</td>'


def _interval(e: Estimate) -> str:
    return f"{100 * e.value:+.1f} [{100 * e.low:+.1f}, {100 * e.high:+.1f}]"


_SCRIPT = """
function sortBy(col, dir) {
  const body = document.querySelector('#board tbody');
  const rows = Array.from(body.rows);
  const key = r => { const v = parseFloat(r.cells[col].dataset.value); return isNaN(v) ? null : v; };
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);
    return dir === 'asc' ? x - y : y - x;
  });
  rows.forEach(r => body.appendChild(r));
  document.querySelectorAll('#board thead th[data-col]').forEach(th => {
    th.dataset.dir = (Number(th.dataset.col) === col) ? dir : '';
  });
}
document.querySelectorAll('#board thead th[data-col]').forEach(th => {
  th.addEventListener('click', () => sortBy(Number(th.dataset.col), th.dataset.dir === 'desc' ? 'asc' : 'desc'));
});
function openAsked() {
  const target = document.getElementById(decodeURIComponent(location.hash.slice(1)));
  if (target && target.tagName === 'DETAILS') target.open = true;
}
window.addEventListener('hashchange', openAsked);
openAsked();
const asked = decodeURIComponent(location.hash).match(/^#sort=(.+),(asc|desc)$/);
if (asked) {
  const th = Array.from(document.querySelectorAll('#board thead th[data-col]')).find(t => t.dataset.name === asked[1]);
  if (th) sortBy(Number(th.dataset.col), asked[2]);
}
"""

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222} table{border-collapse:collapse;font-size:13px}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}"
    "td:nth-child(-n+2),th.name{text-align:left} th[data-col]{cursor:pointer;background:#f4f4f4}"
    "th[data-dir=desc]::after{content:' ▼'} th[data-dir=asc]::after{content:' ▲'}"
    "th.group{background:#e8eef7} .ctx{background:#fbeeee} .par{background:#edf3fa}"
    "details{margin:.3em 0} .prov{font-size:12px;color:#555} img{max-width:100%}"
)


def to_page(
    report: Any,  # stats.report.Report (not imported: report.py imports this module)
    flagged: set[str],
    title: str = "qk-ablate report",
    chart: Path | None = None,
    heatmaps: list[Path] | None = None,
    provenance: Provenance | None = None,
    notes: list[str] | None = None,
    preformatted: str | None = None,
) -> str:
    """The whole page as a string (see the module docstring); `flagged`: the tasks whose baseline
    carries no signal."""
    kinds = {t: report.kinds.get(t, task_kind(t)) for t in report.tasks}  # --kinds and YAML kinds included
    order = [t for k in (*KINDS, None) for t in report.tasks if kinds[t] == k]
    groups = [(k, [t for t in order if kinds[t] == k]) for k in (*KINDS, None)]
    head1 = '<th class="name" rowspan="2" data-col="0" data-name="model">model</th>'
    head1 += '<th class="name" rowspan="2" data-col="1" data-name="intervention">intervention</th>'
    head2, col = [], 2
    for kind, tasks in groups:
        if tasks:
            head1 += f'<th class="group" colspan="{len(tasks)}">{html.escape(kind or "other")} tasks</th>'
        for task in tasks:
            name = f"{task} {MARK}" if task in flagged else task
            head2.append(f'<th data-col="{col}" data-name="{html.escape(task)}">{html.escape(name)}</th>')
            col += 1
    head1 += '<th class="group" colspan="5">means and interaction</th>'
    for name in ("contextual", "Δ contextual", "parametric", "Δ parametric", "interaction"):
        head2.append(f'<th data-col="{col}" data-name="{html.escape(name)}">{html.escape(name)}</th>')
        col += 1
    rows: list[str] = []
    details: list[str] = []
    for r, (run, comparison) in enumerate(report.rows):
        reference = run.is_baseline and comparison.baseline.path == run.path  # the baseline's own row
        rows.append(_row(report, r, run, comparison, order, details, reference))
    parts = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<table id="board"><thead><tr>{head1}</tr><tr>{"".join(head2)}</tr></thead>',
        f"<tbody>{''.join(rows)}</tbody></table>",
        *(f"<p>{html.escape(line)}</p>" for line in notes or []),
    ]
    if preformatted:
        parts.append(f"<pre>{html.escape(preformatted)}</pre>")
    if chart is not None and chart.is_file():
        parts.append(f"<h2>Deltas</h2>{_image(chart)}")
    for path in heatmaps or []:
        parts.append(f"<h2>{html.escape(path.parent.parent.name)}: {html.escape(path.stem)}</h2>{_image(path)}")
    if details:
        parts.append("<h2>Documents that changed</h2>" + "".join(details))
    if provenance is not None:
        versions = ", ".join(f"{k} {v}" for k, v in provenance.versions.items())
        commit = f"; git commit {html.escape(provenance.commit)}" if provenance.commit else ""
        parts.append(
            f'<p class="prov">Made by <code>{html.escape(provenance.command)}</code> on {html.escape(provenance.date)}'
            f" with {html.escape(versions)}{commit}.</p>"
        )
    parts.append(f"<script>{_SCRIPT}</script></body></html>\n")
    return "\n".join(parts)


def _row(
    report: Any, r: int, run: Run, comparison: Comparison, order: list[str], details: list[str], base: bool
) -> str:
    """One table row, and the details of its changed cells appended to `details`."""
    flags = set() if base else {s.task for s in report.row_flags(run)}
    cells = [_cell(None, run.model), _cell(None, run.label)]
    reference = comparison.baseline
    for task in order:
        if task not in run.tasks or task not in comparison.tasks:
            cells.append(_cell(None, "n/a"))
            continue
        score = 100 * run.tasks[task].mean
        text = f"{score:.1f}" + (f" {ROW_MARK}" if task in flags else "")
        if base:  # sorted as no change, the intervention rows by their change
            cells.append(_cell(0.0, text))
            continue
        delta = comparison.tasks[task]
        changed = changed_documents(reference.tasks[task], run.tasks[task]) if task in reference.tasks else []
        link = f"changed-{r}-{task}" if changed else None
        if link:
            details.append(_changed(link, run, task, changed))
        cells.append(_cell(100 * delta.value, f"{text} ({_interval(delta)})", link))
    for kind in KINDS:
        mean, change = comparison.means.get(kind), comparison.deltas.get(kind)
        cells.append(
            _cell(None if mean is None else 100 * mean.value, "n/a" if mean is None else f"{100 * mean.value:.1f}")
        )
        cells.append(
            _cell(
                None if base or change is None else 100 * change.value,
                "" if base or change is None else _interval(change),
            )
        )
    inter = comparison.interaction
    cells.append(
        _cell(None if base or inter is None else 100 * inter.value, "" if base or inter is None else _interval(inter))
    )
    return f"<tr>{''.join(cells)}</tr>"


def _changed(anchor: str, run: Run, task: str, changed: list[tuple[int, float, float, str, str]]) -> str:
    lines = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in (doc, f"{before:.2f}", f"{after:.2f}", a, b))
        + "</tr>"
        for doc, before, after, a, b in changed[:CHANGED_SHOWN]
    )
    more = f" (first {CHANGED_SHOWN} shown)" if len(changed) > CHANGED_SHOWN else ""
    return (
        f'<details id="{anchor}"><summary>{html.escape(run.model)}, {html.escape(run.label)}, {html.escape(task)}: '
        f"{len(changed)} documents changed{more}</summary><table><tr><th>doc</th><th>baseline score</th>"
        f"<th>score</th><th>baseline answer</th><th>answer</th></tr>{lines}</table></details>"
    )
