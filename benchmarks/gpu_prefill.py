"""GPU prefill overhead on a Llama-3.1-8B-shaped random bf16 model (not a test: prints figures).

Plain Hugging Face forward vs the same model with an intervention attached, and vs the profile's
statistics observer (M of Q/K/V pre and post RoPE, reduced as the forward runs); same prompt,
SDPA, batch 1, logits for the last position only (the set-up of the README's GPU table). Needs
no lm-eval: only torch, transformers and qk_ablate.

    PYTHONPATH=src python benchmarks/gpu_prefill.py --tokens 32768
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import transformers

from qk_ablate import InterventionSpec, attach
from qk_ablate.massive_stats import collect_massive_stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[32768])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--attn", default="sdpa")
    args = parser.parse_args()

    config = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=args.layers,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=args.attn)
    model.eval()
    variants = {
        "plain": None,
        "ablate=none": InterventionSpec(),
        "ablate=massive": InterventionSpec(ablate="massive"),
        "ablate=nonmassive": InterventionSpec(ablate="nonmassive"),
        "quant=int4": InterventionSpec(quant="int4"),
        "quant=int4,axis=channel,kv,protect": InterventionSpec(quant="int4", quant_axis="channel", quant_targets="kv", protect="massive"),
        "profile observer (pre+post q,k,v)": "profile",
    }
    print(f"torch {torch.__version__} transformers {transformers.__version__} {torch.cuda.get_device_name()} "
          f"layers={args.layers} attn={args.attn} bf16 batch=1 logits_to_keep=1")
    print("| tokens | variant | median s | time ratio | peak GiB | memory ratio |")
    print("|---|---|---|---|---|---|")
    for tokens in args.tokens:
        ids = torch.randint(0, config.vocab_size, (1, tokens), device="cuda")
        rows = {}
        for name, spec in variants.items():
            times, peak = [], 0
            for repeat in range(args.repeats + 1):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                started = time.perf_counter()
                with torch.no_grad():
                    if spec is None:
                        model(ids, logits_to_keep=1, use_cache=False)
                    elif spec == "profile":
                        collect_massive_stats(model, [{"input_ids": ids}]).mean_norms(0, "k", "post")
                    else:
                        with attach(model, spec):
                            model(ids, logits_to_keep=1, use_cache=False)
                torch.cuda.synchronize()
                if repeat:  # the first is a warm-up
                    times.append(time.perf_counter() - started)
                peak = max(peak, torch.cuda.max_memory_allocated())
            rows[name] = (statistics.median(times), peak)
        base_t, base_m = rows["plain"]
        for name, (t, m) in rows.items():
            print(f"| {tokens} | {name} | {t:.3f} | {t / base_t:.3f} | {m / 2**30:.1f} | {m / base_m:.3f} |")


if __name__ == "__main__":
    main()
