"""How far two correct float32 computations of the planted GPU-agreement model drift apart (prints figures).

`vllm_gpu_agreement.py`'s random Llama-3.2-1B-shaped model has dims 30 and 62 of every Q/K head
scaled 30x. Its float32 no-op loglikelihoods differ between vLLM and the HF engine by far more than
1e-4, while `ablate=massive` agrees to 1e-5. This asks whether that is the model or the engine: the
HF model alone, float32 on the CPU, with two attention kernels (SDPA and eager), on the same 24
requests; then the same with the planted pair zeroed in q_proj and k_proj.

    python3 benchmarks/planted_conditioning.py --tokenizer .gpu/tokenizer
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from vllm_gpu_agreement import requests, save_model  # noqa: E402


def loglikelihoods(model, tokenizer) -> list[float]:
    """Summed log-probabilities of each request's continuation, one request at a time."""
    out = []
    for context, continuation in (r.args for r in requests()):
        prefix = tokenizer(context).input_ids
        whole = tokenizer(context + continuation).input_ids
        with torch.no_grad():
            logp = model(torch.tensor([whole])).logits.float().log_softmax(-1)[0]
        positions = range(len(prefix), len(whole))
        out.append(float(sum(logp[i - 1, whole[i]] for i in positions)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="a tokenizer folder (the embedded model's)")
    parser.add_argument("--folder", default="/tmp/llama1b-shaped", help="the model (saved there if missing)")
    args = parser.parse_args()
    folder = Path(args.folder)
    if not (folder / "config.json").exists():
        save_model(args.tokenizer, folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    for zeroed in (False, True):
        values = {}
        for kernel in ("sdpa", "eager"):
            began = time.perf_counter()
            model = transformers.AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch.float32, attn_implementation=kernel
            )
            if zeroed:
                with torch.no_grad():
                    for layer in model.model.layers:
                        attention = layer.self_attn
                        for proj, heads in ((attention.q_proj, 32), (attention.k_proj, 8)):
                            proj.weight.view(heads, 64, -1)[:, [30, 62]] = 0
            values[kernel] = loglikelihoods(model, tokenizer)
            print(f"{kernel}{' (pair zeroed)' if zeroed else ''}: {time.perf_counter() - began:.0f}s", flush=True)
        diffs = sorted(abs(a - b) for a, b in zip(values["sdpa"], values["eager"]))
        label = "planted pair zeroed" if zeroed else "no-op"
        print(f"{label}: |SDPA - eager| median {statistics.median(diffs):.2e}, max {diffs[-1]:.2e}", flush=True)


if __name__ == "__main__":
    main()
