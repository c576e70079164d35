"""The quantizer table: each checkpoint of configs/quantizers.yaml beside its size, its stored
formats, its drop against the base model (the sweep's report, 95% paired bootstrap intervals)
and its massive-value fingerprint against the base (`qk-ablate fingerprint` defaults: 4 ctxqa
prompts of 1k tokens, post-RoPE, lam 5).

    .venv/bin/qk-ablate sweep configs/quantizers.yaml      # the cells and report.csv
    .venv/bin/python results/quantizers/study.py           # fingerprint/<method>/, table.md, table.json

Another grid of checkpoints (configs/quantizers_gpu.yaml) is given as the argument; everything is
read from and written to that config's `output` folder. A fingerprint already saved is kept
(delete its folder to remake it).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from qk_ablate.models.checkpoints import INFO, size_on_disk, stored_formats
from qk_ablate.probes.fingerprint import run_fingerprint, save_fingerprint
from qk_ablate.sweep import load_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BITS = {"rtn": "W4A16", "gptq": "W4A16", "awq": "W4A16", "smoothquant": "W8A8", "w8a8": "W8A8"}


def interval(row: dict[str, str], key: str) -> str:
    return f"{float(row[key]):+.1f} [{float(row[key + '_low']):+.1f}, {float(row[key + '_high']):+.1f}]"


def main(argv: list[str]) -> int:
    config = load_config(Path(argv[0]) if argv else ROOT / "configs" / "quantizers.yaml")
    out = Path(config.output)
    out = out if out.is_absolute() else ROOT / out
    with open(out / "report.csv", newline="", encoding="utf-8") as handle:
        report = {row["model"]: row for row in csv.DictReader(handle) if row["intervention"] == "baseline"}
    base = config.baseline_model
    rows = []
    for model in config.models:
        name = str(model["pretrained"])
        if name == base:
            continue
        folder = ROOT / name
        record = json.loads((folder / INFO).read_text(encoding="utf-8"))
        saved = out / "fingerprint" / record["method"]
        if not (saved / "fingerprint.json").is_file():
            result = run_fingerprint(f"pretrained={base},dtype=float32", f"pretrained={name},dtype=float32", [1024],
                                     log=lambda line: print(line, file=sys.stderr))
            save_fingerprint(result, saved)
        fingerprint = json.loads((saved / "fingerprint.json").read_text(encoding="utf-8"))
        formats = stored_formats(folder)
        row = report[name]
        rows.append({
            "method": record["method"], "format": BITS[record["method"]], "group": record["group_size"],
            "size_mb": round(size_on_disk(folder) / 1e6, 1),
            "stored": {dtype: round(size / 1e6, 1) for dtype, size in formats.items()},
            "quantize_s": record["seconds"], "contextual": interval(row, "contextual_delta"),
            "parametric": interval(row, "parametric_delta"), "interaction": interval(row, "interaction"),
            "fingerprint_distance": fingerprint["distance"],
            "overlap_q": fingerprint["overlap"]["q"], "overlap_k": fingerprint["overlap"]["k"],
            "versions": record["versions"],
        })
    (out / "table.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    lines = ["| method | format | size (MB) | stored tensors (MB by dtype) | Δ contextual | Δ parametric | interaction "
             "| fingerprint distance | massive overlap Q / K |", "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        stored = ", ".join(f"{d} {s}" for d, s in sorted(r["stored"].items(), key=lambda kv: -kv[1]))
        fmt = r["format"] + (f" g{r['group']}" if r["group"] else "")
        lines.append(f"| {r['method']} | {fmt} | {r['size_mb']} | {stored} | {r['contextual']} | {r['parametric']} "
                     f"| {r['interaction']} | {r['fingerprint_distance']:.3f} | {r['overlap_q']:.2f} / {r['overlap_k']:.2f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
