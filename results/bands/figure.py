"""The README's band picture: Δ contextual and Δ parametric of the massive dims, the authors' top-1,
and each band's and the control's pooled row, from the sweep's report.csv (per-seed rows left out).

    .venv/bin/python results/bands/figure.py      # -> results/bands/bands.png
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
ROWS = {  # report row -> label
    "ablate=massive": "massive dims\n(Definition 1)",
    "ablate=massive,preset=jin2025,select=topk,control=smallest": "authors' code\n(top 1 per head)",
    "ablate=massive,select=band,band=low,exclude=massive,seed=pooled 0-3": "low band,\nnot massive\n(4 seeds)",
    "ablate=massive,select=band,band=mid,seed=pooled 0-1": "mid band\n(2 seeds)",
    "ablate=massive,select=band,band=high,seed=pooled 0-1": "high band\n(2 seeds)",
    "ablate=nonmassive,seed=pooled 0-2": "non-massive\ncontrol\n(3 seeds)",
}


def main() -> Path:
    with (HERE / "report.csv").open(newline="") as handle:
        rows = {row["intervention"]: row for row in csv.DictReader(handle)}
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.38
    for offset, (kind, colour) in zip((-width / 2, width / 2), (("contextual", "#c0392b"), ("parametric", "#2471a3"))):
        for i, key in enumerate(ROWS):
            row = rows[key]
            value = float(row[f"{kind}_delta"])
            low, high = float(row[f"{kind}_delta_low"]), float(row[f"{kind}_delta_high"])
            ax.bar(i + offset, value, width, color=colour, label=f"Δ {kind}" if i == 0 else None)
            ax.errorbar(i + offset, value, yerr=[[value - low], [high - value]], color="black", capsize=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(ROWS)), list(ROWS.values()), fontsize=8)
    ax.set_ylabel("change vs baseline (points)")
    ax.set_title("SmolLM2-135M, 30 docs/task: as many dims per head as are massive, from where?", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = HERE / "bands.png"
    fig.savefig(out, dpi=120)
    return out


if __name__ == "__main__":
    print(main())
