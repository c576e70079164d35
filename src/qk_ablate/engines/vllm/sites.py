"""Where Q, K and V live in a vLLM model, and which heads a tensor-parallel rank holds.

vLLM's Llama-family models share one rotary module across layers, so post-RoPE q, k, v are
reached at each layer's `self_attn.attn` (vLLM's `Attention`, which has a `layer_name` and
receives them as `[tokens, heads * head_dim]`); pre-RoPE, at the fused `qkv_proj` beside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from qk_ablate.errors import QKAblateError


@dataclass(frozen=True)
class VllmSite:
    """One layer of a vLLM model: its attention module, fused projection and head counts (local and all)."""

    layer: int
    attn: nn.Module
    qkv_proj: nn.Module | None
    num_heads: int
    num_kv_heads: int
    head_dim: int
    total_heads: int
    total_kv_heads: int


def find_sites(model: nn.Module) -> list[VllmSite]:
    """Every decoder layer's attention, found from the modules (vLLM's `Attention` has `layer_name`)."""
    sites: list[VllmSite] = []
    for _, module in model.named_modules():
        attn = getattr(module, "attn", None)
        name = getattr(attn, "layer_name", None)
        if attn is None or name is None or not hasattr(attn, "num_kv_heads"):
            continue
        found = re.search(r"layers\.(\d+)\.", name)
        layer = int(found.group(1)) if found else len(sites)
        heads, kv_heads = int(attn.num_heads), int(attn.num_kv_heads)
        sites.append(
            VllmSite(
                layer,
                attn,
                getattr(module, "qkv_proj", None),
                heads,
                kv_heads,
                int(attn.head_size),
                int(getattr(module, "total_num_heads", heads)),
                int(getattr(module, "total_num_kv_heads", kv_heads)),
            )
        )
    if not sites:
        raise QKAblateError(
            f"found no vLLM attention layers in {type(model).__name__}; qk_ablated_vllm cannot reach it"
        )
    return sorted(sites, key=lambda s: s.layer)


def local_heads(total: int, world: int, rank: int) -> tuple[int, ...]:
    """The heads rank `rank` of `world` holds under vLLM's tensor parallelism (global indices).

    Heads are split in contiguous blocks; with fewer KV heads than ranks, each KV head is
    replicated on `world // total` consecutive ranks.
    """
    if total >= world:
        if total % world:
            raise QKAblateError(f"{total} heads cannot be split over tensor_parallel_size={world}")
        per = total // world
        return tuple(range(rank * per, (rank + 1) * per))
    if world % total:
        raise QKAblateError(f"{total} KV heads cannot be replicated over tensor_parallel_size={world}")
    return (rank // (world // total),)
