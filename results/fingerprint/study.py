"""Does the fingerprint warn of the damage? For each quantizer of configs/fingerprint.yaml: the
fingerprint distance of the embedded model under it against the plain model (the defaults of
`qk-ablate fingerprint`: 4 ctxqa prompts of 1k tokens, post-RoPE, lam 5) beside the gate's
contextual drop of its sweep cell against the baseline cell; Spearman's rank correlation with
its exact two-sided permutation p-value (all 8! orderings). The distance is the primary
predictor, fixed before the drops were seen; its two parts are shown as secondary ones.

    .venv/bin/qk-ablate sweep configs/fingerprint.yaml      # the cells
    .venv/bin/python results/fingerprint/study.py           # table.csv, table.json, the markdown table

The model is loaded once and the plain model measured once; each quantizer is one more pass.
The fingerprints are kept in fingerprints.json (`--fingerprints-only` stops there, no cell needed).
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from qk_ablate.stats.compare import compare as compare_runs
from qk_ablate.probes.fingerprint import compare, measure, prompt_texts
from qk_ablate.stats.gate import run_gate
from qk_ablate.models.loading import load_model
from qk_ablate.stats.runs import load_run
from qk_ablate.sweep import load_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BUDGETS = (2.0, 5.0)  # contextual budgets (points) for the early-warning check


def ranks(values: list[float]) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    out = np.empty(len(values))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[order[j + 1]] == values[order[i]]:
            j += 1
        out[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> tuple[float, float]:
    """(rho, exact two-sided p over every permutation of y)."""
    rx, ry = ranks(x), ranks(y)
    rho = float(np.corrcoef(rx, ry)[0, 1])
    hits = total = 0
    for perm in itertools.permutations(ry):
        total += 1
        hits += abs(float(np.corrcoef(rx, perm)[0, 1])) >= abs(rho) - 1e-12
    return rho, hits / total


def misordered(distance: list[float], drop: list[float], budget: float) -> tuple[int, int]:
    """(pairs where a cell over the budget has a distance no larger than a cell within it, all such pairs)."""
    over = [d for d, x in zip(distance, drop) if x > budget]
    within = [d for d, x in zip(distance, drop) if x <= budget]
    return sum(o <= w for o in over for w in within), len(over) * len(within)


PROMPTS = {"source": "ctxqa", "lengths": [1024], "samples_per_length": 4, "where": "post", "lam": 5.0}


def fingerprints(config) -> dict[str, dict]:
    """Each quantizer's fingerprint summary against the plain model, kept in fingerprints.json."""
    path = HERE / "fingerprints.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("prompts") == PROMPTS and set(saved["quantizers"]) == {n for n, s in config.interventions.items()
                                                                           if not s.is_noop}:
            return saved["quantizers"]
    model, tokenizer = load_model("smollm2-135m", "cpu", "float32")
    texts = prompt_texts(tokenizer, PROMPTS["lengths"], PROMPTS["samples_per_length"], PROMPTS["source"],
                         int(model.config.max_position_embeddings))
    batches = [{"input_ids": tokenizer(text, return_tensors="pt").input_ids} for text in texts]
    started = time.process_time()
    base = measure(model, batches, "smollm2-135m")
    print(f"plain model measured in {time.process_time() - started:.1f} CPU s", file=sys.stderr)
    out = {}
    for name, spec in config.interventions.items():
        if spec.is_noop:
            continue
        started = time.process_time()
        result = compare(base, measure(model, batches, name, spec=spec))
        out[name] = {key: value for key, value in result.items() if key != "layers"}
        out[name]["cpu_s"] = round(time.process_time() - started, 1)
        print(f"{name}: distance {result['distance']:.4f} ({out[name]['cpu_s']} CPU s)", file=sys.stderr)
    path.write_text(json.dumps({"prompts": PROMPTS, "quantizers": out}, indent=1) + "\n", encoding="utf-8")
    return out


def main() -> int:
    config = load_config(ROOT / "configs" / "fingerprint.yaml")
    cells = ROOT / config.output / "smollm2-135m"
    prints = fingerprints(config)
    if "--fingerprints-only" in sys.argv:
        return 0
    baseline_run = load_run(cells / "baseline")
    rows = []
    for name, result in prints.items():
        verdict = run_gate(cells / "baseline", cells / name, "contextual=0,parametric=0")
        if verdict.code == 2:
            raise SystemExit(verdict.reason)
        drops = {c.name: c.drop for c in verdict.checks}
        run = load_run(cells / name)
        tasks = compare_runs(baseline_run, run).tasks
        rows.append({
            "quantizer": name, "distance": result["distance"],
            "one_minus_overlap": round(1 - float(np.mean(list(result["overlap"].values()))), 4),
            "abs_log_peak_to_mean": round(float(np.mean(list(result["abs_log_peak_to_mean"].values()))), 4),
            "layers_changed": len(result["layers_changed"]),
            "contextual_drop": round(100 * drops["contextual"].value, 2),
            "contextual_drop_low": round(100 * drops["contextual"].low, 2),
            "contextual_drop_high": round(100 * drops["contextual"].high, 2),
            "parametric_drop": round(100 * drops["parametric"].value, 2),
            **{f"{task}_acc": round(100 * run.tasks[task].mean, 1) for task in sorted(run.tasks)},
            **{f"{task}_delta": round(100 * est.value, 1) for task, est in sorted(tasks.items())},
            "fingerprint_cpu_s": result["cpu_s"],
        })
    drop = [r["contextual_drop"] for r in rows]
    stats = {}
    for key in ("distance", "one_minus_overlap", "abs_log_peak_to_mean"):
        rho, p = spearman([r[key] for r in rows], drop)
        stats[key] = {"spearman_vs_contextual_drop": round(rho, 4), "exact_p_two_sided": round(p, 4)}
    bits = [-int(config.interventions[r["quantizer"]].quant[3:]) for r in rows]  # a reference that reads no model
    rho, p = spearman(bits, drop)
    stats["reference_fewer_bits"] = {"spearman_vs_contextual_drop": round(rho, 4), "exact_p_two_sided": round(p, 4)}
    rho, p = spearman([r["distance"] for r in rows], [r["parametric_drop"] for r in rows])
    stats["distance_vs_parametric_drop"] = {"spearman": round(rho, 4), "exact_p_two_sided": round(p, 4)}
    warning = {}
    for budget in BUDGETS:
        bad, pairs = misordered([r["distance"] for r in rows], drop, budget)
        over = [r["quantizer"] for r in rows if r["contextual_drop"] > budget]
        warning[f"contextual_budget_{budget:g}"] = {"over_budget": over, "misordered_pairs": bad, "pairs": pairs}
    body = {"prompts": PROMPTS,
            "documents_per_task": config.limit, "rows": rows, "correlation": stats, "early_warning": warning}
    (HERE / "table.json").write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    with (HERE / "table.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("| quantizer (Q/K, in attention) | distance | 1 − overlap | mean abs ln p/m | passkey_1k | niah_1k | city_facts "
          "| Δ contextual [95% CI] | Δ parametric |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: r["distance"]):
        delta = lambda key: f"{-r[key] + 0.0:+.1f}"  # noqa: E731  (+ 0.0: no "-0.0")
        print(f"| {r['quantizer']} | {r['distance']:.4f} | {r['one_minus_overlap']:.4f} | {r['abs_log_peak_to_mean']:.4f} "
              f"| {r['passkey_1k_acc']:g} | {r['niah_1k_acc']:g} | {r['city_facts_acc']:g} "
              f"| {delta('contextual_drop')} [{delta('contextual_drop_high')}, {delta('contextual_drop_low')}] "
              f"| {delta('parametric_drop')} |")
    print(json.dumps({"correlation": stats, "early_warning": warning}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
