"""Which (head, dim) columns are massive (paper Definition 1, or top-k) and the matched control.

All functions take attention-layout tensors `x: [B, H, S, D]` and an optional `valid: [B, S]`
bool mask (False = padding). Masks are per sample, so a prompt's selection does not depend on
what else is in the batch.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from qk_ablate.spec import InterventionSpec


def column_norms(x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """M[b, h, d] = L2 norm of x[b, h, :, d] over the sample's non-padding positions, in float32."""
    x = x.float()
    if valid is not None:
        x = x * valid[:, None, :, None].to(x.dtype)
    return x.square().sum(dim=2).sqrt()


def massive_mask_threshold(norms: torch.Tensor, lam: float) -> torch.Tensor:
    """Dims whose norm exceeds `lam` times the head's mean norm: `[B, H, D]` bool."""
    return norms > lam * norms.mean(dim=-1, keepdim=True)


def massive_mask_topk(norms: torch.Tensor, k: int) -> torch.Tensor:
    """The `k` largest-norm dims of every head: `[B, H, D]` bool."""
    k = min(k, norms.shape[-1])
    index = norms.topk(k, dim=-1).indices
    return torch.zeros_like(norms, dtype=torch.bool).scatter_(-1, index, True)


def control_mask(massive: torch.Tensor, scores: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Per head, as many dims as are massive there, from the `allowed` ones: those with the lowest `scores`.

    `scores` broadcasts to `[B, H, D]`: seeded uniform noise for `control=random` and bands, the
    column norms for `control=smallest`. `allowed` (broadcast to `[B, H, D]`) defaults to the
    non-massive dims; where fewer dims are allowed than are massive, all of them are chosen.
    Vectorised by ranking.
    """
    allowed = ~massive if allowed is None else allowed.expand(massive.shape)
    scores = scores.float().expand(massive.shape).masked_fill(~allowed, float("inf"))
    rank = scores.argsort(dim=-1, stable=True).argsort(dim=-1)
    count = massive.sum(dim=-1, keepdim=True)
    return (rank < count) & allowed


def random_scores(num_heads: int, head_dim: int, seed: int, salt: int, device: torch.device) -> torch.Tensor:
    """Seeded `[1, H, D]` noise for the random control, the same for every sample of a batch.

    `salt` separates layers and tensors so each gets its own draw, reproducibly.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + salt)
    return torch.rand((1, num_heads, head_dim), generator=generator).to(device)


def summarize_selection(selected: Mapping[str, int], heads: Mapping[str, int]) -> dict[str, dict[str, float]]:
    """The results JSON's `qk_ablate_selected`: per tensor, columns chosen per prompt head, and the head count
    (totals of one process, or summed over an engine's workers, each holding its own heads)."""
    return {name: {"dims_per_head": round(total / heads[name], 4) if heads[name] else 0.0, "heads": heads[name]}
            for name, total in sorted(selected.items())}


def warn_if_nothing_selected(spec: InterventionSpec, selected: dict[str, dict[str, float]]) -> None:
    """A run labelled `ablate=massive` that selected no dim on any prompt changed nothing: say so."""
    empty = [name for name, count in selected.items() if count["heads"] and not count["dims_per_head"]]
    if empty:
        print(
            f"qk-ablate: warning: {spec.select} selection chose no dim of {'/'.join(e.upper() for e in empty)} on any prompt "
            f"(lam={spec.lam}), so this run left them unchanged; lower lam or use select=topk",
            file=sys.stderr,
        )
