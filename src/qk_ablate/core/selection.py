"""Which (head, dim) columns are massive (paper Definition 1, or top-k) and the matched control.

All functions take attention-layout tensors `x: [B, H, S, D]` and an optional `valid: [B, S]`
bool mask (False = padding). Masks are per sample, so a prompt's selection does not depend on
what else is in the batch.
"""

from __future__ import annotations

import torch


def column_norms(x: torch.Tensor, valid: torch.Tensor | None = None, native: bool = False) -> torch.Tensor:
    """M[b, h, d] = L2 norm of x[b, h, :, d] over the sample's non-padding positions, as float32.

    `native`: the norm as the authors' code takes it, `torch.norm` of the tensor in its own dtype
    (rounded to it: in bf16 two dims' norms can then tie, and `topk` breaks the tie as it does for them).
    """
    if native:
        if valid is not None:
            x = x * valid[:, None, :, None].to(x.dtype)
        return x.norm(dim=2).float()
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
