"""Print the results table of results/issue3 (lm-eval results JSONs of scripts/issue3_runs.sh).

    .venv/bin/python scripts/issue3_table.py [results/issue3]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VARIANTS = {"none": "baseline", "massive": "`ablate=massive`", "nonmassive": "`ablate=nonmassive`"}
TASKS = ["passkey_1k", "niah_1k", "ctxqa_1k", "imdb", "city_facts", "country_capital"]
CONTEXTUAL = {"passkey_1k", "niah_1k", "ctxqa_1k", "imdb"}


def load(folder: Path) -> tuple[dict[str, dict], dict[str, int]]:
    """Every task's results and sample count, over all results files below `folder` (newest wins)."""
    results, counts = {}, {}
    for path in sorted(folder.rglob("results_*.json")):
        data = json.loads(path.read_text())
        results.update(data["results"])
        counts.update({task: n["effective"] for task, n in data.get("n-samples", {}).items()})
    return results, counts


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results/issue3")
    runs = {name: load(root / name) for name in VARIANTS if (root / name).is_dir()}
    _, counts = runs["none"]
    header = [f"{t} ({'contextual' if t in CONTEXTUAL else 'parametric'}, {counts.get(t, '?')} docs)" for t in TASKS]
    print(f"| variant | {' | '.join(header)} |")
    print("|---|" + "---:|" * len(TASKS))
    base = runs["none"][0]
    for name, (results, _) in runs.items():
        cells = []
        for task in TASKS:
            r = results.get(task)
            if r is None:
                cells.append("n/a")
                continue
            acc, err = 100 * r["acc,none"], 100 * r["acc_stderr,none"]
            delta = "" if name == "none" else f" ({acc - 100 * base[task]['acc,none']:+.1f})"
            cells.append(f"{acc:.1f} ± {err:.1f}{delta}")
        print(f"| {VARIANTS[name]} | {' | '.join(cells)} |")
    print("\naccuracy in %, ± standard error; (change vs baseline in points)")


if __name__ == "__main__":
    main()
