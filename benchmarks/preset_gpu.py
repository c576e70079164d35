"""`preset=jin2025` against the authors' code on a GPU, in bf16: bit-identical logits or not (issue 25).

A random Llama-3.1-8B-shaped bf16 model with a planted massive rotary pair (`gpu.build`) and the
embedded tokenizer; passkey prompts of several lengths. Each prompt runs three times: the authors'
edit (tests/authors_reference.py, their loop, norms in bf16), `preset=jin2025` (norms in the
tensor's dtype, the preset's `norm_dtype=native`), and the same preset with `norm_dtype=float32`.
It prints, per prompt, how many heads' top-1 column norm is tied in bf16 under their edit (a tie
is where the two rankings can part), and the largest |logit difference| of each against theirs;
our fused kernels run compiled (`QK_ABLATE_COMPILE=1`, the default on CUDA) and eager.

    python3 benchmarks/preset_gpu.py --tokenizer .gpu/tokenizer
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).parent))

import gpu  # noqa: E402
from transformers import AttentionInterface  # noqa: E402
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface  # noqa: E402
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

from authors_reference import register_reference  # noqa: E402
from qk_ablate.core.spec import InterventionSpec  # noqa: E402
from qk_ablate.engines.hf.attachment import Attachment  # noqa: E402
from qk_ablate.task_data.passkey import build_passkey_docs  # noqa: E402

TIES: list[int] = []  # heads whose two largest bf16 column norms are equal, per attention call


def _counting(reference: str) -> str:
    """The reference with a tally of tied top norms (Q per query head, K per KV head) in front."""

    def attention(module, query, key, value, attention_mask, **kwargs):
        if query.shape[2] != 1:
            for states in (query, key):  # [B, H, S, D]
                top = states.norm(dim=2).topk(2, dim=-1).values
                TIES.append(int((top[..., 0] == top[..., 1]).sum()))
        return ALL_ATTENTION_FUNCTIONS[reference](module, query, key, value, attention_mask, **kwargs)

    name = reference + "_counting"
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return name


@torch.no_grad()
def _logits(model, ids: torch.Tensor, spec: InterventionSpec | None = None, implementation: str | None = None):
    if implementation is not None:
        model.set_attn_implementation(implementation)
        try:
            return model(ids).logits
        finally:
            model.set_attn_implementation("sdpa")
    with Attachment(model, spec):
        return model(ids).logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="a tokenizer folder (the embedded model's)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--lengths", default="1024,2048,4096,8192", help="prompt lengths, comma-separated")
    parser.add_argument("--per-length", type=int, default=3)
    parser.add_argument(
        "--smoke", action="store_true", help="a small model on the CPU: checks the script, measures nothing"
    )
    args = parser.parse_args()
    if args.smoke:
        gpu.DEVICE, gpu.WIDTH = "cpu", 256

    tokenizer = transformers.AutoTokenizer.from_pretrained(args.tokenizer)
    model = gpu.build(len(tokenizer), args.layers, tokenizer)
    reference = _counting(register_reference(1, "mean"))
    preset = InterventionSpec.from_args({"preset": "jin2025"})
    float32_norms = InterventionSpec.from_args({"preset": "jin2025", "norm_dtype": "float32"})
    card = torch.cuda.get_device_name() if gpu.DEVICE == "cuda" else "CPU (smoke)"
    print(f"{card}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"random Llama-3.1-8B-shaped bf16 model, {args.layers} layers, dims 60 and 124 of every Q/K head x30")
    print("| tokens | tied heads (all layers, Q+K) | compiled: preset | eager: preset | float32 norms |")
    print("|---:|---:|---:|---:|---:|")
    equal = {"1": 0, "0": 0}
    departed = 0
    prompts = 0
    for length in (int(n) for n in args.lengths.split(",")):
        for doc in build_passkey_docs(tokenizer, length, num_docs=args.per_length):
            ids = tokenizer(doc["input"], return_tensors="pt").input_ids.to(model.device)
            TIES.clear()
            theirs = _logits(model, ids, implementation=reference)
            ties = sum(TIES)
            cells = []
            for compiled in ("1", "0"):
                os.environ["QK_ABLATE_COMPILE"] = compiled
                ours = _logits(model, ids, preset)
                equal[compiled] += torch.equal(ours, theirs)
                cells.append(f"{(ours.float() - theirs.float()).abs().max().item():.3g}")
            os.environ["QK_ABLATE_COMPILE"] = "1"
            other = _logits(model, ids, float32_norms)
            departed += not torch.equal(other, theirs)
            cells.append(f"{(other.float() - theirs.float()).abs().max().item():.3g}")
            prompts += 1
            print(f"| {ids.shape[1]} | {ties} | " + " | ".join(cells) + " |", flush=True)
    print(
        f"bit-identical to the authors' code: compiled {equal['1']}/{prompts}, eager {equal['0']}/{prompts};"
        f" float32 norms depart on {departed}/{prompts}"
    )


if __name__ == "__main__":
    main()
