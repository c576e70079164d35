"""Where Q, K and V live in a loaded Hugging Face model, found from its modules (no forked code).

Pre-RoPE Q/K are the projection outputs, taken after q_norm/k_norm where the architecture has
them (Qwen3, Gemma3, OLMo2, StableLM's qk_layernorm). Fused projections are sliced by layout:
blocked `[Q | K | V]` (Phi-3 `qkv_proj`, GPT-2 `c_attn`, Falcon multi-query), per head
`[q k v]` (GPT-NeoX and old Falcon `query_key_value`), or per KV group `[q..q k v]` (Falcon's
new decoder architecture).

Multi-head latent attention (DeepSeek-V3, MLA) has no per-head pre-RoPE key: there Q is the
query projection, K is the one rotary key head `k_pe` that `kv_a_proj_with_mqa` shares across
heads, and V is the value part of `kv_b_proj`. Post-RoPE, each head's query and key are
`[nope | rope]` with only the last `qk_rope_head_dim` dims rotated, so massive-dim selection
(and its control) for MLA's Q and K runs over those rotary dims only: the nope dims are a
content projection that RoPE never touches, and counting them would mix two different things.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qk_ablate.core.vocabulary import TensorName
from qk_ablate.errors import QKAblateError

_QKV: tuple[TensorName, ...] = ("q", "k", "v")


@dataclass(frozen=True)
class TensorSource:
    """A module whose output holds one of Q/K/V for one layer, and where in its last dim.

    The last dim is `groups` equal blocks; this tensor is `[start:stop]` of every block, read
    as heads of `head_dim` (groups=1: a plain slice). `rotary_start`/`interleaved` say where the
    rotary dims of a head start and how they pair; `select` restricts massive-dim selection to a
    span of a head's dims (MLA); `recomputed`: the module reruns on every cached position at each
    step (MLA's `kv_b_proj`), so the prompt's edit must be applied again at decode steps.
    """

    module: nn.Module
    start: int
    stop: int
    num_heads: int
    head_dim: int
    groups: int = 1
    rotary_start: int = 0
    interleaved: bool = False
    select: tuple[int, int] | None = None
    recomputed: bool = False

    def heads(self, output: torch.Tensor) -> torch.Tensor:
        """This tensor of a `[..., width]` module output, as `[..., H, D]` (a copy for strided layouts)."""
        blocks = output.unflatten(-1, (self.groups, -1))[..., self.start : self.stop]
        return blocks.unflatten(-1, (-1, self.head_dim)).flatten(-3, -2)

    def write(self, output: torch.Tensor, new: torch.Tensor) -> None:
        """Write `new: [..., H, D]` into this tensor's columns of `output` (in place)."""
        blocks = output.unflatten(-1, (self.groups, -1))[..., self.start : self.stop]
        blocks.copy_(new.unflatten(-2, (self.groups, -1)).flatten(-2))


@dataclass(frozen=True)
class AttentionSite:
    """One attention layer: its module (the post-RoPE attention function receives it) and its Q/K/V sources.

    `head_dim` is the post-RoPE query/key head dim; `rotary_start`, `select` and `recomputed`
    describe the post-RoPE query/key as `TensorSource` does for the projections (MLA: keys and
    values are rebuilt from a latent cache every step, so they are not the cache's tensors).
    """

    layer: int
    module: nn.Module
    num_heads: int
    num_kv_heads: int
    head_dim: int
    sources: dict[TensorName, TensorSource]
    rotary_start: int = 0
    select: tuple[int, int] | None = None
    recomputed: bool = False


@dataclass(frozen=True)
class ModelLayout:
    """All attention sites of a model, in layer order, and whether it uses rotary embeddings.

    `post_rope`: whether its attention goes through transformers' AttentionInterface, so that
    post-RoPE Q/K can be reached (Falcon computes attention inline).
    """

    sites: tuple[AttentionSite, ...]
    has_rope: bool
    model_type: str
    post_rope: bool = True

    @property
    def num_layers(self) -> int:
        return len(self.sites)


def find_layout(model: nn.Module) -> ModelLayout:
    """Locate every self-attention layer's Q/K/V, or raise a readable error for unsupported models."""
    config = model.config.get_text_config() if hasattr(model, "config") else None  # type: ignore[union-attr, operator]
    model_type = str(getattr(config, "model_type", type(model).__name__))
    sites: list[AttentionSite] = []
    for _, module in model.named_modules():
        site = _site_for(module, config, model_type, len(sites))
        if site is not None:
            sites.append(site)
    if not sites:
        raise QKAblateError(
            f"found no self-attention layers with q/k/v projections in {type(model).__name__}; qk-ablate supports "
            "decoder-only Hugging Face models (llama, mistral, qwen2/3, gemma2/3, phi, phi3, stablelm, olmo2, "
            "gpt_neox, falcon, deepseek_v3, gpt2, opt, ...); ablate=none runs on any model"
        )
    sites.sort(key=lambda s: s.layer)
    has_rope = not getattr(config, "alibi", False) and any(
        isinstance(buf, torch.Tensor) and name.endswith("inv_freq") for name, buf in model.named_buffers()
    )
    return ModelLayout(tuple(sites), has_rope, model_type, post_rope=model_type != "falcon")


def _site_for(module: nn.Module, config, model_type: str, position: int) -> AttentionSite | None:
    if getattr(module, "is_cross_attention", False):
        return None
    layer = getattr(module, "layer_idx", None)
    layer = int(position if layer is None else layer)
    if isinstance(getattr(module, "kv_a_proj_with_mqa", None), nn.Module):
        return _latent_site(module, config, model_type, layer)
    if isinstance(getattr(module, "query_key_value", None), nn.Module):
        return _query_key_value_site(module, config, model_type, layer)
    fused = getattr(module, "qkv_proj", None) or getattr(module, "c_attn", None)
    separate = all(isinstance(getattr(module, name, None), nn.Module) for name in ("q_proj", "k_proj", "v_proj"))
    if not separate and not isinstance(fused, nn.Module):
        return None
    num_heads = int(getattr(module, "num_heads", 0) or config.num_attention_heads)
    num_kv = int(getattr(module, "num_key_value_heads", 0) or getattr(config, "num_key_value_heads", None) or num_heads)
    head_dim = int(
        getattr(module, "head_dim", 0)
        or getattr(config, "head_dim", None)
        or config.hidden_size // config.num_attention_heads
    )
    q_width, kv_width = num_heads * head_dim, num_kv * head_dim
    if separate:
        q_out = getattr(module, "q_norm", None) or getattr(module, "q_layernorm", None) or _child(module, "q_proj")
        k_out = getattr(module, "k_norm", None) or getattr(module, "k_layernorm", None) or _child(module, "k_proj")
        sources: dict[TensorName, TensorSource] = {
            "q": TensorSource(q_out, 0, q_width, num_heads, head_dim),
            "k": TensorSource(k_out, 0, kv_width, num_kv, head_dim),
            "v": TensorSource(_child(module, "v_proj"), 0, kv_width, num_kv, head_dim),
        }
    else:
        assert isinstance(fused, nn.Module)  # not `separate`, so the check above found a fused projection
        sources = _blocked(fused, num_heads, num_kv, head_dim)
    return AttentionSite(layer, module, num_heads, num_kv, head_dim, sources)


def _child(module: nn.Module, name: str) -> nn.Module:
    """`module.<name>`, a submodule (torch types a module's attributes as `Tensor | Module`)."""
    child = getattr(module, name)
    assert isinstance(child, nn.Module), f"{type(module).__name__}.{name} is not a module"
    return child


def _blocked(fused: nn.Module, num_heads: int, num_kv: int, head_dim: int) -> dict[TensorName, TensorSource]:
    """`[Q | K | V]` in one output."""
    q_width, kv_width = num_heads * head_dim, num_kv * head_dim
    return {
        "q": TensorSource(fused, 0, q_width, num_heads, head_dim),
        "k": TensorSource(fused, q_width, q_width + kv_width, num_kv, head_dim),
        "v": TensorSource(fused, q_width + kv_width, q_width + 2 * kv_width, num_kv, head_dim),
    }


def _query_key_value_site(module: nn.Module, config, model_type: str, layer: int) -> AttentionSite:
    """GPT-NeoX and Falcon: one `query_key_value` projection in one of three layouts."""
    fused = _child(module, "query_key_value")
    num_heads = int(getattr(module, "num_heads", 0) or config.num_attention_heads)
    head_dim = int(getattr(module, "head_dim", 0) or getattr(module, "head_size", 0) or config.hidden_size // num_heads)
    d = head_dim
    if model_type == "falcon" and getattr(module, "new_decoder_architecture", False):
        groups = int(config.num_kv_heads)  # per KV head: its query heads, then one key and one value
        per = num_heads // groups
        sources: dict[TensorName, TensorSource] = {
            "q": TensorSource(fused, 0, per * d, num_heads, d, groups=groups),
            "k": TensorSource(fused, per * d, (per + 1) * d, groups, d, groups=groups),
            "v": TensorSource(fused, (per + 1) * d, (per + 2) * d, groups, d, groups=groups),
        }
    elif model_type == "falcon" and getattr(module, "multi_query", False):
        sources = _blocked(fused, num_heads, 1, d)
    elif model_type in ("falcon", "gpt_neox"):  # per head: q, k, v of that head
        sources = {
            name: TensorSource(fused, i * d, (i + 1) * d, num_heads, d, groups=num_heads) for i, name in enumerate(_QKV)
        }
    else:
        raise QKAblateError(
            f"{model_type} has a fused query_key_value projection whose layout qk-ablate does not know; "
            "gpt_neox and falcon are supported"
        )
    num_kv = sources["k"].num_heads
    return AttentionSite(layer, module, num_heads, num_kv, head_dim, sources)


def _latent_site(module: nn.Module, config, model_type: str, layer: int) -> AttentionSite:
    """DeepSeek-V3 multi-head latent attention (see the module docstring for what Q, K, V are)."""
    if model_type != "deepseek_v3":
        raise QKAblateError(
            f"{model_type} uses multi-head latent attention in a form qk-ablate does not know; "
            "deepseek_v3 (and models of that type) are supported"
        )
    sizes = ("num_heads", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "kv_lora_rank")
    heads, nope, rope, v_dim, rank = (int(getattr(module, name)) for name in sizes)
    interleaved = bool(getattr(config, "rope_interleave", False))
    query = getattr(module, "q_proj", None) or _child(module, "q_b_proj")
    qk_dim = nope + rope
    sources: dict[TensorName, TensorSource] = {
        "q": TensorSource(
            query, 0, heads * qk_dim, heads, qk_dim, rotary_start=nope, interleaved=interleaved, select=(nope, qk_dim)
        ),
        "k": TensorSource(_child(module, "kv_a_proj_with_mqa"), rank, rank + rope, 1, rope, interleaved=interleaved),
        "v": TensorSource(_child(module, "kv_b_proj"), nope, nope + v_dim, heads, v_dim, groups=heads, recomputed=True),
    }
    # post-RoPE, DeepSeek's interleaved rotary returns its output in rotate-half order
    return AttentionSite(
        layer, module, heads, heads, qk_dim, sources, rotary_start=nope, select=(nope, qk_dim), recomputed=True
    )
