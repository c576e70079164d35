"""Where Q, K and V live in a loaded Hugging Face model, found from its modules (no forked code).

Pre-RoPE Q/K are the projection outputs, taken after q_norm/k_norm where the architecture has
them (Qwen3, Gemma3, OLMo2); fused projections (Phi-3 `qkv_proj`, GPT-2 `c_attn`) are sliced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qk_ablate.errors import QKAblateError


@dataclass(frozen=True)
class TensorSource:
    """A module whose output holds one of Q/K/V for one layer, and where in its last dim."""

    module: nn.Module
    start: int
    stop: int
    num_heads: int
    head_dim: int


@dataclass(frozen=True)
class AttentionSite:
    """One attention layer: its module (the post-RoPE attention function receives it) and its Q/K/V sources."""

    layer: int
    module: nn.Module
    num_heads: int
    num_kv_heads: int
    head_dim: int
    sources: dict[str, TensorSource]


@dataclass(frozen=True)
class ModelLayout:
    """All attention sites of a model, in layer order, and whether it uses rotary embeddings."""

    sites: tuple[AttentionSite, ...]
    has_rope: bool
    model_type: str

    @property
    def num_layers(self) -> int:
        return len(self.sites)


def find_layout(model: nn.Module) -> ModelLayout:
    """Locate every self-attention layer's Q/K/V, or raise a readable error for unsupported models."""
    config = model.config.get_text_config() if hasattr(model, "config") else None
    model_type = getattr(config, "model_type", type(model).__name__)
    sites = []
    for _, module in model.named_modules():
        site = _site_for(module, config, len(sites))
        if site is not None:
            sites.append(site)
    if not sites:
        raise QKAblateError(
            f"found no self-attention layers with q/k/v projections in {type(model).__name__}; "
            "qk-ablate supports decoder-only Hugging Face models (llama, mistral, qwen2/3, gemma2/3, phi3, olmo2, gpt2, opt, ...)"
        )
    sites.sort(key=lambda s: s.layer)
    has_rope = any(isinstance(buf, torch.Tensor) and name.endswith("inv_freq") for name, buf in model.named_buffers())
    return ModelLayout(tuple(sites), has_rope, str(model_type))


def _site_for(module: nn.Module, config, position: int) -> AttentionSite | None:
    if getattr(module, "is_cross_attention", False):
        return None
    fused = getattr(module, "qkv_proj", None) or getattr(module, "c_attn", None)
    separate = all(isinstance(getattr(module, name, None), nn.Module) for name in ("q_proj", "k_proj", "v_proj"))
    if not separate and not isinstance(fused, nn.Module):
        return None
    num_heads = int(getattr(module, "num_heads", 0) or getattr(config, "num_attention_heads"))
    num_kv = int(getattr(module, "num_key_value_heads", 0) or getattr(config, "num_key_value_heads", None) or num_heads)
    head_dim = int(
        getattr(module, "head_dim", 0)
        or getattr(config, "head_dim", None)
        or getattr(config, "hidden_size") // getattr(config, "num_attention_heads")
    )
    q_width, kv_width = num_heads * head_dim, num_kv * head_dim
    if separate:
        sources = {
            "q": TensorSource(getattr(module, "q_norm", None) or module.q_proj, 0, q_width, num_heads, head_dim),
            "k": TensorSource(getattr(module, "k_norm", None) or module.k_proj, 0, kv_width, num_kv, head_dim),
            "v": TensorSource(module.v_proj, 0, kv_width, num_kv, head_dim),
        }
    else:
        sources = {
            "q": TensorSource(fused, 0, q_width, num_heads, head_dim),
            "k": TensorSource(fused, q_width, q_width + kv_width, num_kv, head_dim),
            "v": TensorSource(fused, q_width + kv_width, q_width + 2 * kv_width, num_kv, head_dim),
        }
    layer = getattr(module, "layer_idx", None)
    return AttentionSite(int(position if layer is None else layer), module, num_heads, num_kv, head_dim, sources)
