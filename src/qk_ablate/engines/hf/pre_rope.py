"""Pre-RoPE (`rope=pre`): forward hooks on the modules whose outputs hold Q, K and V.

A hook returns a new output only when something changed; a fused projection's output is
copied once and only this intervention's columns of it are written (Q, K and V of
`[Q | K | V]`, per-head or per-group layouts alike: `TensorSource.heads` / `.write`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qk_ablate.core.step import TensorSite
from qk_ablate.engines.hf.arch import ModelLayout, TensorSource
from qk_ablate.engines.hf.forward import Forward


def install(layout: ModelLayout, forward: Forward) -> list[torch.utils.hooks.RemovableHandle]:
    """One forward hook per source module (a fused projection gets one hook for its Q, K and V)."""
    by_module: dict[nn.Module, list[tuple[TensorSite, TensorSource]]] = {}
    for site in layout.sites:
        for name, source in site.sources.items():
            by_module.setdefault(source.module, []).append((TensorSite(site.layer, name, "pre"), source))
    return [module.register_forward_hook(_hook(forward, entries)) for module, entries in by_module.items()]


def _hook(forward: Forward, entries: list[tuple[TensorSite, TensorSource]]) -> Callable:
    editor = forward.editor

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if output.ndim == 4 and output.shape[-1] == entries[0][1].head_dim:  # a per-head q_norm/k_norm
            ((site, source),) = entries  # one source, [B, S, H, D] or [B, H, S, D]
            heads_first = _heads_first(args[0], output, source.num_heads)
            x = output if heads_first else output.transpose(1, 2)
            new = editor.edit(site, x, forward.step, span=source.select, recomputed=source.recomputed)
            if new is None:
                return None
            return new if heads_first else new.transpose(1, 2)
        latent = output.ndim == 4  # MLA's kv_b_proj runs on the latent as one head: [B, 1, S, width]
        flat = output.flatten(1, 2) if latent else output
        edited: list[tuple[TensorSource, torch.Tensor]] = []
        for site, source in entries:  # [B, S, width], maybe a fused q|k|v projection
            x = source.heads(flat).transpose(1, 2)
            new = editor.edit(site, x, forward.step, span=source.select, recomputed=source.recomputed)
            if new is not None:
                edited.append((source, new))
        if not edited:
            return None
        result = flat.clone()
        for source, new in edited:
            source.write(result, new.transpose(1, 2))
        return result.unflatten(1, output.shape[1:3]) if latent else result

    return hook


def _heads_first(norm_input: torch.Tensor, output: torch.Tensor, num_heads: int) -> bool:
    """Whether a per-head norm runs on [B, H, S, D] (Gemma3, Phi, StableLM) rather than [B, S, H, D] (Qwen3).

    Decided by shape, or, when S == H, by the input's strides: a transposed view of the
    projection has its head stride smaller than its sequence stride.
    """
    if output.shape[1] == num_heads and output.shape[2] != num_heads:
        return True
    if output.shape[2] == num_heads and output.shape[1] != num_heads:
        return False
    return norm_input.stride(1) < norm_input.stride(2)
