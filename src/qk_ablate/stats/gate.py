"""A regression gate for CI: does a candidate run (say, a quantized checkpoint) lose more than its
budget against a baseline run?

Budgets are drops in percentage points for `contextual`, `parametric` (pooled means) or any task
name: `contextual=2,parametric=2,passkey_4k=5`. A budget is exceeded when the measured drop (the
point estimate, baseline minus candidate) is larger than it; the 95% paired bootstrap interval is
reported beside it. Exit codes: 0 every budget holds, 1 a budget is exceeded, 2 the runs could not
be compared (missing, empty or corrupt files, a task missing from the candidate, unpaired documents,
a budget naming something the baseline does not have). It never passes what it could not compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

from qk_ablate.errors import QKAblateError
from qk_ablate.stats.compare import DEFAULT_ITERATIONS, Comparison, Estimate, compare
from qk_ablate.stats.runs import Run, load_runs
from qk_ablate.task_data.catalogue import KINDS

PASS, FAIL, UNUSABLE = 0, 1, 2


def parse_budgets(text: str) -> dict[str, float]:
    """`contextual=2,parametric=2` -> {"contextual": 2.0, "parametric": 2.0} (points, >= 0)."""
    budgets: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        try:
            points = float(value)
        except ValueError:
            points = -1.0
        if not sep or not name.strip() or points < 0:
            raise QKAblateError(
                f"--max-drop entry '{part.strip()}' is not NAME=POINTS with POINTS >= 0; e.g. contextual=2,parametric=2"
            )
        budgets[name.strip()] = points
    if not budgets:
        raise QKAblateError("--max-drop names no budget; e.g. --max-drop contextual=2,parametric=2")
    return budgets


@dataclass(frozen=True)
class Check:
    name: str
    budget: float  # points
    drop: Estimate  # baseline - candidate, as fractions

    @property
    def passed(self) -> bool:
        return 100 * self.drop.value <= self.budget + 1e-9

    def sentence(self) -> str:
        d = self.drop
        verdict = "within" if self.passed else "exceeds"
        return (
            f"{self.name} dropped {100 * d.value:.1f} points (95% CI {100 * d.low:.1f} to {100 * d.high:.1f}), "
            f"{verdict} its budget of {self.budget:g}"
        )


@dataclass(frozen=True)
class Verdict:
    code: int
    reason: str
    checks: list[Check]


def _drop(delta: Estimate) -> Estimate:
    return Estimate(-delta.value + 0.0, -delta.high + 0.0, -delta.low + 0.0)  # + 0.0: no "-0.0"


def evaluate(comparison: Comparison, budgets: dict[str, float]) -> Verdict:
    checks = []
    for name, budget in budgets.items():
        if name in KINDS:
            if name not in comparison.deltas:
                raise QKAblateError(f"--max-drop names {name} but the baseline has no {name} task")
            delta = comparison.deltas[name]
        elif name in comparison.tasks:
            delta = comparison.tasks[name]
        else:
            raise QKAblateError(
                f"--max-drop names {name}, which is neither contextual, parametric nor a task of the baseline"
            )
        checks.append(Check(name, budget, _drop(delta)))
    code = PASS if all(c.passed for c in checks) else FAIL
    tasks = ", ".join(f"{t} ({n} docs)" for t, n in comparison.docs.items())
    reason = (
        f"Candidate '{comparison.candidate.path}' against baseline '{comparison.baseline.path}' on {tasks}: "
        f"{'pass' if code == PASS else 'FAIL'}. " + "; ".join(c.sentence() for c in checks) + "."
    )
    if comparison.unclassified and any(name in KINDS for name in budgets):
        reason += f" Warning: {unclassified_warning(comparison.unclassified)}."
    return Verdict(code, reason, checks)


def _one_run(paths: list[str | Path], role: str) -> Run:
    """The run that folders of one model and intervention make together (one lm_eval call per task, say)."""
    runs = load_runs(paths)
    if len(runs) > 1:
        names = "; ".join(f"'{run.path}' ({run.model} / {run.label})" for run in runs)
        raise QKAblateError(
            f"the {role} folders hold {len(runs)} different runs ({names}); give the folders of one run"
        )
    return runs[0]


def unclassified_warning(tasks: list[str] | tuple[str, ...]) -> str:
    """The one line that names tasks counted in neither the contextual nor the parametric mean."""
    return (
        f"{', '.join(tasks)} counted in neither the contextual nor the parametric mean; classify with "
        f"--kinds {tasks[0]}=contextual (or parametric), or `kind:` in the task YAML's metadata"
    )


def run_gate(
    baseline: str | Path | list[str | Path],
    candidate: str | Path | list[str | Path],
    max_drop: str,
    junit: str | Path | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    json_path: str | Path | None = None,
    kinds: dict[str, str] | None = None,
) -> Verdict:
    """Load, compare and judge; an unusable input gives exit code 2 with its reason, never a pass.

    `baseline` and `candidate` are run folders (several folders of one run are merged); `kinds`
    classifies tasks the catalogue and the tasks' own YAML do not (as `report --kinds` does).
    The verdict is also written as JUnit XML (`junit`) and/or JSON (`json_path`) for the CI page.
    """
    as_list = lambda paths: list(paths) if isinstance(paths, (list, tuple)) else [paths]  # noqa: E731
    try:
        budgets = parse_budgets(max_drop)
        base, cand = _one_run(as_list(baseline), "baseline"), _one_run(as_list(candidate), "candidate")
        if not base.tasks:
            raise QKAblateError(f"the baseline '{base.path}' holds no task results")
        verdict = evaluate(compare(base, cand, kinds=kinds, iterations=iterations), budgets)
    except QKAblateError as exc:
        verdict = Verdict(UNUSABLE, f"could not compare the runs: {exc}", [])
    for path, write in ((junit, write_junit), (json_path, write_json)):
        if path is not None:
            try:
                write(verdict, path)
            except OSError as exc:
                raise QKAblateError(f"could not write the gate report '{path}' ({exc.strerror or exc})") from None
    return verdict


def write_json(verdict: Verdict, path: str | Path) -> Path:
    """The verdict as JSON: exit code, reason and each budget with its drop and 95% interval (points)."""
    import json

    body = {
        "code": verdict.code,
        "verdict": {PASS: "pass", FAIL: "fail", UNUSABLE: "unusable"}[verdict.code],
        "reason": verdict.reason,
        "checks": [
            {
                "name": c.name,
                "budget": c.budget,
                "drop": round(100 * c.drop.value, 4),
                "drop_low": round(100 * c.drop.low, 4),
                "drop_high": round(100 * c.drop.high, 4),
                "passed": c.passed,
            }
            for c in verdict.checks
        ],
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    return out


def write_junit(verdict: Verdict, path: str | Path) -> Path:
    """A JUnit XML report: one test case per budget (or one error case when nothing was compared)."""
    suite = ET.Element("testsuite", name="qk-ablate gate", tests=str(max(1, len(verdict.checks))))
    if verdict.code == UNUSABLE:
        suite.set("errors", "1")
        case = ET.SubElement(suite, "testcase", classname="qk_ablate.stats.gate", name="compare runs")
        ET.SubElement(case, "error", message=verdict.reason).text = verdict.reason
    else:
        suite.set("failures", str(sum(not c.passed for c in verdict.checks)))
        for check in verdict.checks:
            case = ET.SubElement(suite, "testcase", classname="qk_ablate.stats.gate", name=f"max drop {check.name}")
            if not check.passed:
                ET.SubElement(case, "failure", message=check.sentence()).text = verdict.reason
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
    return out
