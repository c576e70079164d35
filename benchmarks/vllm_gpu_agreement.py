"""The vLLM engine against the HF engine on a GPU, per vLLM configuration (prints figures).

A random Llama-3.2-1B-shaped model with a planted massive rotary pair and the embedded model's
tokenizer; 24 loglikelihood requests (real IMDB reviews, both labels). Each configuration runs in
a process of its own (vLLM reads its runner and backend from the environment at start):

* bfloat16 on each attention backend (FLASH_ATTN, TRITON_ATTN, FLASHINFER) and both model
  runners (V1, V2), at vLLM's defaults otherwise (compiled, CUDA graphs, async scheduling): the
  per-request |vLLM - HF| of `ablate=massive` and `quant=int4` beside the no-op's own (the noise
  floor of two engines in bf16);
* float32 with `TRITON_F32_DEFAULT=ieee` (vLLM picks TRITON_ATTN for float32): the same figures.

The HF engine's values are computed once per dtype in this process; each vLLM configuration
starts in a process of its own after the previous one has exited (vLLM's memory profiling assumes
no other process frees GPU memory while it measures).

    python3 benchmarks/vllm_gpu_agreement.py --tokenizer .gpu/tokenizer | tee results/benchmarks/vllm_agreement_h200.log
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECS = {"none": {}, "ablate=massive": {"ablate": "massive"}, "quant=int4": {"quant": "int4"}}
CELLS = [
    {"dtype": "bfloat16", "backend": "FLASH_ATTN", "runner": "default"},
    {"dtype": "bfloat16", "backend": "FLASH_ATTN", "runner": "v1"},
    {"dtype": "bfloat16", "backend": "TRITON_ATTN", "runner": "default"},
    {"dtype": "bfloat16", "backend": "FLASHINFER", "runner": "default"},
    {"dtype": "float32", "backend": "auto", "runner": "default"},
]


def save_model(tokenizer_dir: str, folder: Path) -> None:
    """A random Llama-3.2-1B-shaped bf16 model with dims 30 and 62 of every Q/K head 30 times larger."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():
        for layer in model.model.layers:
            for proj, heads in ((layer.self_attn.q_proj, 32), (layer.self_attn.k_proj, 8)):
                proj.weight.view(heads, 64, -1)[:, [30, 62]] *= 30
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def requests(count: int = 24) -> list:
    from lm_eval.api.instance import Instance

    with open(ROOT / "tests" / "data" / "imdb_test_200.csv", newline="", encoding="utf-8") as handle:
        reviews = [row["review"][: 200 + 97 * i % 1400] for i, row in zip(range(count // 2), csv.DictReader(handle))]
    pairs = [(f"Review: {r}\nSentiment:", label) for r in reviews for label in (" positive", " negative")]
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def vllm_cell(folder: str, cell: dict[str, str]) -> dict:
    """One vLLM configuration (in a process of its own): its loglikelihoods under each spec."""
    import qk_ablate.plugin  # noqa: F401
    from qk_ablate.core.spec import InterventionSpec
    from qk_ablate.engines.vllm.lm import QKAblatedVLLM
    from qk_ablate.errors import QKAblateError

    args = {"dtype": cell["dtype"], "max_model_len": 4096, "gpu_memory_utilization": 0.3, "seed": 0}
    if cell["backend"] != "auto":
        args["attention_backend"] = cell["backend"]
    began = time.perf_counter()
    try:
        vllm = QKAblatedVLLM(pretrained=folder, batch_size="auto", ablate="massive", **args)
    except QKAblateError as error:
        return {"refused": str(error)}
    out: dict = {"start_s": round(time.perf_counter() - began, 1), "settings": vllm.settings()}
    out["runner"] = "v2" if getattr(vllm.model.llm_engine.vllm_config, "use_v2_model_runner", False) else "v1"
    batch = requests()
    for name, spec_args in SPECS.items():
        vllm.use(InterventionSpec.from_args(spec_args))
        before = vllm.counts().prefills
        values = [value for value, _ in vllm.loglikelihood(batch, disable_tqdm=True)]
        out[name] = {"values": values, "prefills": vllm.counts().prefills - before}
    return out


def hf_values(folder: str, dtype: str) -> dict[str, list[float]]:
    """The HF engine's loglikelihoods under each spec, on the GPU where there is one."""
    import torch

    import qk_ablate.plugin  # noqa: F401
    from qk_ablate.core.spec import InterventionSpec
    from qk_ablate.engines.hf.lm import QKAblatedLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf = QKAblatedLM(pretrained=folder, dtype=dtype, device=device, batch_size=8)
    out = {}
    for name, spec_args in SPECS.items():
        hf.use(InterventionSpec.from_args(spec_args))
        out[name] = [value for value, _ in hf.loglikelihood(requests(), disable_tqdm=True)]
    del hf
    return out


def summary(diffs: list[float]) -> str:
    ordered = sorted(diffs)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"median {statistics.median(ordered):.2e}, p90 {p90:.2e}, max {ordered[-1]:.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", help="a tokenizer folder (the embedded model's)")
    parser.add_argument("--folder", default="/tmp/llama1b-shaped", help="the model (saved there if missing)")
    parser.add_argument("--cells", default=",".join(str(i) for i in range(len(CELLS))), help="which CELLS, by index")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = parser.parse_args()
    if args.cell:
        print("CELL " + json.dumps(vllm_cell(args.folder, json.loads(args.cell))), flush=True)
        return
    folder = Path(args.folder)
    if not (folder / "config.json").exists():
        save_model(args.tokenizer, folder)
    cells = [CELLS[int(i)] for i in args.cells.split(",")]
    began = time.perf_counter()
    hf = {dtype: hf_values(str(folder), dtype) for dtype in sorted({cell["dtype"] for cell in cells})}
    print(f"HF engine: {time.perf_counter() - began:.0f}s for {', '.join(hf)}", flush=True)
    for cell in cells:
        env = dict(os.environ)
        if cell["runner"] == "v1":
            env["VLLM_USE_V2_MODEL_RUNNER"] = "0"
        if cell["dtype"] == "float32":
            env["TRITON_F32_DEFAULT"] = "ieee"
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, __file__, "--folder", str(folder), "--cell", json.dumps(cell)],
            env=env,
            capture_output=True,
            text=True,
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("CELL ")]
        label = ", ".join(f"{k}={v}" for k, v in cell.items())
        if not lines:
            print(f"\n## {label}: failed (exit {done.returncode})\n{done.stderr[-3000:]}", flush=True)
            continue
        result = json.loads(lines[-1][5:])
        print(f"\n## {label} ({time.perf_counter() - began:.0f}s)", flush=True)
        if "refused" in result:
            print(f"refused: {result['refused']}", flush=True)
            continue
        print(f"vLLM ran: {result['settings']}, runner {result['runner']}, engine start {result['start_s']}s")
        for name in SPECS:
            diffs = [abs(a - b) for a, b in zip(result[name]["values"], hf[cell["dtype"]][name])]
            print(f"- {name}: |vLLM - HF| {summary(diffs)}; prompts edited {result[name]['prefills']}", flush=True)


if __name__ == "__main__":
    main()
