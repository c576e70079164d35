"""An independent re-implementation of the authors' Llama/Qwen2 attention edit (MingyuJ666/Rope_with_LLM).

Written the way their modified attention is (`modeling_llama.py` / `modeling_qwen2.py`): batch 1,
their flash-attention layout `[B, S, H, D]`, a Python loop over heads, `torch.topk` of the column
norms over the sequence in the tensor's own dtype, the scalar `mean(stack([column.mean() ...]))`
written into every chosen column of that head, in place, prefill only, Q per query head and K per
KV head, post-RoPE, every layer. It runs as an attention function in front of the model's kernel, as
ours does, so any difference is in what is selected and written. Shared by tests/test_presets.py and
benchmarks/preset_gpu.py (the same check on a GPU).
"""

from __future__ import annotations

import sys

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def authors_edit(states: torch.Tensor, k: int, fill: str) -> None:
    """Their per-head loop on `states: [1, S, H, D]` (edited in place, as theirs is)."""
    matrix = states.norm(dim=1).squeeze(0)
    for head_idx in range(states.size(2)):
        _, indices = torch.topk(matrix[head_idx, :], k)
        top_indices = indices.tolist()
        target_vectors = [states[:, :, head_idx, idx] for idx in top_indices]
        mean_value = torch.mean(torch.stack([vector.mean() for vector in target_vectors]))
        for idx in top_indices:
            states[:, :, head_idx, idx] = 0 if fill == "zero" else mean_value


def register_reference(k: int, fill: str, kernel: str = "sdpa") -> str:
    """Register their edit in front of `kernel` as an attention implementation; returns its name."""
    name = f"jin2025_reference_{k}_{fill}_{kernel}"

    def attention(module, query, key, value, attention_mask, **kwargs):
        if query.shape[2] != 1:  # their `if q_len != 1`: the prefill only
            query = query.transpose(1, 2).contiguous()
            authors_edit(query, k, fill)
            query = query.transpose(1, 2)
            authors_edit(key.transpose(1, 2), k, fill)  # a view of the cache's tensor: edited in place
        if kernel == "eager":  # each modeling file has its own eager function (Gemma2's softcapping)
            return sys.modules[type(module).__module__].eager_attention_forward(
                module, query, key, value, attention_mask, **kwargs
            )
        return ALL_ATTENTION_FUNCTIONS[kernel](module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[kernel])  # the kernel's own mask format
    return name


def their_top(states: torch.Tensor, k: int) -> torch.Tensor:
    """Their ranking on `states: [1, S, H, D]`: `torch.topk` of `states.norm(dim=1)` (the tensor's dtype),
    as a `[1, H, D]` mask."""
    matrix = states.norm(dim=1).squeeze(0)
    mask = torch.zeros(matrix.shape, dtype=torch.bool, device=matrix.device)
    for head_idx in range(states.size(2)):
        mask[head_idx, torch.topk(matrix[head_idx, :], k).indices] = True
    return mask[None]
