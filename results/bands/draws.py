"""Which dims each seeded draw of configs/bands.yaml destroys, and how large they are.

For a few passkey_1k prompts of the plain embedded model: per layer, tensor and head, the dims
Definition 1 finds massive (lam=5) and, for every seed of a band or control cell, the dims its
draw takes (the draw is `Editor`'s: seeded noise per layer and tensor, as many dims per head as
are massive there, from the band without the massive dims). Prints, per draw, how many drawn
columns are "near-massive" (norm at least 3x the head's mean) and the largest such ratio.
The counts here come from the plain model's activations; in a run each layer counts on its
already edited input, so the draws are the same noise but may differ in a few heads.

    .venv/bin/python results/bands/draws.py
"""

from __future__ import annotations

import torch

from qk_ablate.engines.hf.attachment import band_dims
from qk_ablate.models.loading import load_model
from qk_ablate.probes.massive_stats import collect_massive_stats
from qk_ablate.core.selection import control_mask, massive_mask_threshold, random_scores
from qk_ablate.core.spec import InterventionSpec
from qk_ablate.task_data.passkey import build_passkey_docs

CELLS = {
    "low band, not massive": ({"select": "band", "band": "low", "exclude": "massive"}, range(4)),
    "mid band": ({"select": "band", "band": "mid"}, range(2)),
    "high band": ({"select": "band", "band": "high"}, range(2)),
    "non-massive control": ({"ablate": "nonmassive"}, range(3)),
}
NEAR = 3.0


def main(prompts: int = 3) -> None:
    model, tokenizer = load_model("smollm2-135m", "cpu", "float32")
    docs = build_passkey_docs(tokenizer, 1024, num_docs=prompts, gen_budget=0)
    batches = [{"input_ids": tokenizer(d["input"], return_tensors="pt").input_ids} for d in docs]
    stats = collect_massive_stats(model, batches, where=("post",))
    print(f"{prompts} passkey_1k prompts; per draw: drawn columns (all layers, Q and K, mean over prompts), "
          f"how many are near-massive (M >= {NEAR:g}x the head's mean), the largest ratio drawn")
    for label, (args, seeds) in CELLS.items():
        spec = InterventionSpec.from_args({"ablate": "massive", **args})
        bands = band_dims(model, spec) if spec.select == "band" else {}
        for seed in seeds:
            drawn = near = 0
            top, where = 0.0, ""
            for layer in stats.layers():
                for name in ("q", "k"):
                    norms = stats.mean_norms(layer, name, "post")[None]  # [1, H, D]
                    ratio = norms / norms.mean(-1, keepdim=True)
                    massive = massive_mask_threshold(norms, 5.0)
                    scores = random_scores(norms.shape[1], norms.shape[2], seed, layer * 3 + "qkv".index(name), norms.device)
                    if spec.select == "band":
                        allowed = bands[name] & ~massive
                        chosen = control_mask(massive, scores, allowed)
                    else:
                        chosen = control_mask(massive, scores)
                    drawn += int(chosen.sum())
                    near += int((chosen & (ratio >= NEAR)).sum())
                    if chosen.any() and float(ratio[chosen].max()) > top:
                        top = float(ratio[chosen].max())
                        flat = int((ratio * chosen).flatten().argmax())
                        head, dim = divmod(flat, norms.shape[2])
                        where = f"layer {layer} {name.upper()} head {head} dim {dim}"
            print(f"  {label:24s} seed {seed}: {drawn:4d} columns drawn, {near:3d} near-massive, "
                  f"largest {top:.2f}x ({where})")


if __name__ == "__main__":
    with torch.no_grad():
        main()
