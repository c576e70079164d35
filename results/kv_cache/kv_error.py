"""How far from the plain keys/values does each quantizer of configs/kv_cache.yaml put them, on one prompt?

The plain model's post-RoPE K and V of every layer (what transformers' cache stores, and what the
real quantized cache quantizes) for the first passkey_1k and passkey_4k documents, quantized by
quanto exactly as `QuantoQuantizedLayer` does it (its prefill update, then the dequantized states
a decode step sees) and by our two simulations (`fake_quantize`); per quantizer the relative error
||Q(x) - x|| / ||x||, averaged over layers. Writes kv_error.md here.

    .venv/bin/python results/kv_cache/kv_error.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from lm_eval.tasks import TaskManager
from transformers.cache_utils import DynamicCache, QuantoQuantizedLayer

import qk_ablate.plugin  # noqa: F401  (our tasks)
from qk_ablate.models.loading import load_model
from qk_ablate.core.quantize import fake_quantize

HERE = Path(__file__).resolve().parent


def real(x: torch.Tensor, bits: int) -> torch.Tensor:
    """What a decode step sees of prompt states `x` in transformers' quanto cache (group 64, the defaults)."""
    layer = QuantoQuantizedLayer(nbits=bits, q_group_size=64)
    layer.update(x, x)
    step = torch.zeros_like(x[:, :, :1])
    return layer.update(step, step)[0][:, :, :-1]


QUANTIZERS = {
    "real quanto (token groups of 64, min/max)": real,
    "sim channel, symmetric (the issue's)": lambda x, bits: fake_quantize(x, f"int{bits}", "channel", sym=True),
    "sim token, group 64, min/max (quanto's grouping)": lambda x, bits: fake_quantize(x, f"int{bits}", "token", group=64,
                                                                                       sym=False),
}


def main() -> None:
    model, tokenizer = load_model("smollm2-135m", "cpu")
    manager = TaskManager(metadata={"pretrained": "smollm2-135m"})
    lines = ["| prompt | tensor | bits | " + " | ".join(QUANTIZERS) + " |", "|---|---|---:|" + "---:|" * len(QUANTIZERS)]
    for task in ("passkey_1k", "passkey_4k"):
        doc = next(iter(manager.load_task_or_group(task)[task].dataset["test"]))
        ids = tokenizer(doc["input"], return_tensors="pt").input_ids
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(ids, cache=cache, use_cache=True)
        for name in ("keys", "values"):
            states = [getattr(layer, name) for layer in cache.layers]
            for bits in (4, 2):
                errors = [torch.stack([(q(x, bits) - x).norm() / x.norm() for x in states]).mean().item()
                          for q in QUANTIZERS.values()]
                lines.append(f"| {task} doc 0 ({ids.shape[1]} tokens) | {name[0].upper()} | {bits} | "
                             + " | ".join(f"{e:.3f}" for e in errors) + " |")
    (HERE / "kv_error.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
