"""Post-RoPE (`rope=post`): a wrapper registered in transformers' `AttentionInterface`.

The model is switched, with its public `set_attn_implementation`, to `qk_ablate:<original>`,
a function that edits query/key/value and then calls the user's own kernel (SDPA, eager, flex),
so no S x S tensor is ever built. It finds its work in its own call, not in a global: every
attention module hands the function itself as `module`, and each attached module carries its
layer's work (the attachment's editor and that layer's site) as the attribute `qk_ablate_site`;
the wrapper refuses to run on a module without it. No hook runs per layer, and a decode step
that the intervention leaves alone (`stage=prefill`) costs the wrapper one check.

Queries, keys and values are edited in place: transformers hands the attention function the
tensors it has just written into the KV cache, so the destroyed prompt keys stay destroyed for
every decode step, and the query (a tensor only the attention kernel reads) keeps its memory
layout. MLA (DeepSeek-V3) caches a latent instead and rebuilds K/V every step; there the
prompt's edit is applied again to the rebuilt prompt positions (`Editor`'s `recomputed`).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from qk_ablate.core.step import TensorSite
from qk_ablate.core.vocabulary import TensorName
from qk_ablate.engines.hf.arch import AttentionSite, ModelLayout
from qk_ablate.engines.hf.forward import Forward
from qk_ablate.errors import QKAblateError

PREFIX = "qk_ablate:"
ATTRIBUTE = "qk_ablate_site"


def install(model: nn.Module, layout: ModelLayout, forward: Forward) -> str:
    """Switch `model` to the wrapper and give its attention modules their work; returns the original implementation."""
    original = _check(model, layout)
    _register_wrapper(original)
    model.set_attn_implementation(PREFIX + original)  # type: ignore[operator]
    stale = [s.layer for s in layout.sites if not _implementation(s.module, model).startswith(PREFIX)]
    if stale:
        model.set_attn_implementation(original)  # type: ignore[operator]
        raise QKAblateError(
            f"{layout.model_type}: attention layer {stale[0]} kept its own attention implementation, so post-RoPE "
            "Q/K cannot be reached; use rope=pre"
        )
    for site in layout.sites:
        setattr(site.module, ATTRIBUTE, (forward, site))
    return original


def restore(model: nn.Module, layout: ModelLayout, original: str) -> None:
    """Give the model back its attention implementation and take the layers' work off its modules."""
    model.set_attn_implementation(original)  # type: ignore[operator]
    for site in layout.sites:
        if hasattr(site.module, ATTRIBUTE):
            delattr(site.module, ATTRIBUTE)


def _check(model: nn.Module, layout: ModelLayout) -> str:
    """The model's current attention implementation, or a one-line reason why post-RoPE work cannot reach it."""
    original = _implementation(layout.sites[0].module, model)
    if original.startswith(PREFIX):
        raise QKAblateError("this model already has a qk-ablate attachment; remove it before attaching another")
    can_set = getattr(model, "_can_set_attn_implementation", None)
    if not layout.post_rope or not hasattr(model, "set_attn_implementation") or (can_set is not None and not can_set()):
        raise QKAblateError(
            f"{layout.model_type} computes attention inside its own modules, not through transformers' "
            "AttentionInterface, so post-RoPE Q/K cannot be reached; use rope=pre (the projection outputs)"
        )
    if "flash" in original:
        raise QKAblateError(
            f"attn_implementation={original} looks itself up by the model's attention name, so it cannot run behind "
            "the post-RoPE wrapper; load the model with attn_implementation=sdpa (or eager), or use rope=pre"
        )
    return original


def _implementation(module: nn.Module, model: nn.Module) -> str:
    config = getattr(module, "config", None)
    config = model.config if config is None else config
    return getattr(config, "_attn_implementation", None) or "eager"


def edit(
    forward: Forward, site: AttentionSite, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Edit query and the new positions of key/value in place (the latter are the cache's tensors)."""
    editor, step = forward.editor, forward.step
    if step.idle:  # a decode step the intervention leaves alone
        return query, key, value
    q_len = query.shape[2]
    editor.edit(TensorSite(site.layer, "q", "post"), query, step, span=site.select, into=True)
    tensors: dict[TensorName, torch.Tensor] = {"k": key, "v": value}
    for name, tensor in tensors.items():
        tensor_site = TensorSite(site.layer, name, "post")
        span = site.select if name == "k" else None
        if site.recomputed:  # rebuilt from a latent cache: a new tensor every step, edited as a whole
            new = editor.edit(tensor_site, tensor, step, span=span, recomputed=True)
            tensors[name] = tensor if new is None else new
            continue
        part = tensor[:, :, :q_len] if step.prefill else tensor[:, :, -q_len:]
        editor.edit(tensor_site, part, step, span=span, into=True)
    return query, tensors["k"], tensors["v"]


def _register_wrapper(original: str) -> None:
    """Register `qk_ablate:<original>` for attention and for mask creation (once per process)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = PREFIX + original
    if name in ALL_ATTENTION_FUNCTIONS:
        return

    def attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
        entry: tuple[Forward, AttentionSite] | None = getattr(module, ATTRIBUTE, None)
        if entry is None:
            raise QKAblateError(
                f"{type(module).__name__} called the qk-ablate attention function but is not one of the attached "
                "attention modules, so post-RoPE work cannot reach it; use rope=pre"
            )
        query, key, value = edit(*entry, query, key, value)
        if original in ALL_ATTENTION_FUNCTIONS:
            kernel = ALL_ATTENTION_FUNCTIONS[original]
        else:  # "eager": each modeling file has its own eager function (softcapping etc.)
            kernel = sys.modules[type(module).__module__].eager_attention_forward
        return kernel(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(name, attention)
    if original in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
