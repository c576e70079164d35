"""Host cost of a decode step that the intervention leaves alone (not a test: prints figures).

Batched generation with Hugging Face models is bound by the host: a decode step's time is Python
and kernel launches, and an intervention with `stage=prefill` adds to it only a check per layer.
On a GPU that cost drowns in the decode loop's run-to-run spread (plain's own 64-problem runs
spread from 39 to 70 s on a lent H100), so it is measured here on the CPU, with a model whose every
op is tiny (32 layers of a 64-wide Llama, batch 16, every other row left-padded): its decode step
is almost all host work, the same Python per layer as an 8B model's, so the figure is the most the
intervention can add to a step. Two copies of the model decode side by side, plain and attached,
and every step runs on both back to back (which one first alternates), so a drift of the machine
hits both alike; the figure is the median over all steps of the attached copy's time minus
plain's. `ablate=none` attaches nothing: its row is the method's own noise.

    .venv/bin/python benchmarks/decode_step.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import transformers

from qk_ablate import InterventionSpec, attach

VARIANTS = {
    "ablate=none": InterventionSpec(),
    "ablate=massive": InterventionSpec(ablate="massive"),
    "quant=int4": InterventionSpec(quant="int4"),
    "ablate=massive,stage=all": InterventionSpec(ablate="massive", stage="all"),
}


def build(layers: int) -> transformers.PreTrainedModel:
    """A Llama of `layers` layers whose ops are tiny, so a decode step is almost all host work."""
    config = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens (left-padded rows get fewer)")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    ids = torch.randint(0, 512, (args.batch, args.prompt))
    mask = torch.ones_like(ids)
    mask[::2, : args.prompt // 4] = 0  # every other row left-padded, as lm-eval batches prompts
    plain, ours = build(args.layers), build(args.layers)

    def paired(spec: InterventionSpec) -> tuple[list[float], list[float]]:
        """Per decode step: plain's seconds, and the attached copy's seconds minus plain's."""
        base, added = [], []
        with torch.no_grad(), attach(ours, spec):
            caches = [model(ids, attention_mask=mask, use_cache=True).past_key_values for model in (plain, ours)]
            grown = mask
            for step in range(args.steps):
                grown = torch.cat([grown, torch.ones_like(grown[:, :1])], dim=1)
                token = ids[:, step % args.prompt : step % args.prompt + 1]
                seconds = [0.0, 0.0]
                for which in (0, 1) if step % 2 else (1, 0):
                    started = time.perf_counter()
                    (plain, ours)[which](token, attention_mask=grown, past_key_values=caches[which], use_cache=True)
                    seconds[which] = time.perf_counter() - started
                base.append(seconds[0])
                added.append(seconds[1] - seconds[0])
        return base, added

    for spec in VARIANTS.values():  # warm-up
        paired(spec)
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in VARIANTS}
    names = list(VARIANTS)
    for round_ in range(args.rounds):  # a new order each round
        for name in random.Random(round_).sample(names, len(names)):
            base, added = paired(VARIANTS[name])
            times[name][0].extend(base)
            times[name][1].extend(added)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, CPU, {torch.get_num_threads()} threads; "
        f"{args.layers} layers, batch {args.batch}, {args.prompt}-token prompts, {args.steps} decode steps, "
        f"median over the {args.rounds * args.steps} steps of {args.rounds} rounds\n"
    )
    print(
        "| variant | plain's ms per decode step | attached minus plain, ms | ratio | added per layer per step, us |\n"
        "|---|---:|---:|---:|---:|"
    )
    for name, (base, added) in times.items():
        plain_ms, added_ms = 1000 * statistics.median(base), 1000 * statistics.median(added)
        print(
            f"| {name} | {plain_ms:.3f} | {added_ms:+.3f} | {1 + added_ms / plain_ms:.3f} "
            f"| {1000 * added_ms / args.layers:+.1f} |"
        )


if __name__ == "__main__":
    main()
