"""What is done to the selected columns: replace every prompt entry by a fill value."""

from __future__ import annotations

import torch


def fill_values(
    x: torch.Tensor, valid: torch.Tensor | None, mode: str, columns: torch.Tensor | None = None
) -> torch.Tensor:
    """The replacement value, broadcastable to `x: [B, H, S, D]`.

    mean: each (head, dim) column's mean over the sample's prompt positions (the authors' choice);
    shared_mean: one value per head, the average of the selected `columns`' means (the authors'
    Qwen2 code); tensor_mean: the mean of the whole sample tensor (all heads, dims, prompt
    positions); zero: 0. Padding positions never enter a mean. (`shuffle` is `shuffled_prompt`.)
    """
    means = None if mode == "zero" else column_means(x, valid)
    return fill_from_means(means, mode, x, columns)


def column_means(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """`[B, H, 1, D]` float32: each column's mean over the sample's non-padding positions."""
    xf = x.float()
    if valid is None:
        return xf.mean(dim=2, keepdim=True)
    weight = valid[:, None, :, None].to(xf.dtype)
    return (xf * weight).sum(dim=2, keepdim=True) / weight.sum(dim=2, keepdim=True).clamp_min(1)


def fill_from_means(
    means: torch.Tensor | None, mode: str, x: torch.Tensor, columns: torch.Tensor | None = None
) -> torch.Tensor:
    """`fill_values` from the column means already taken (None for `zero`), in `x`'s dtype and on its device."""
    dtype = x.dtype
    if mode == "zero":
        return x.new_zeros(())
    if means is None:
        raise ValueError(f"fill={mode} needs the column means")
    if mode == "mean":
        return means.to(dtype)
    if mode == "shared_mean":
        if columns is None:
            raise ValueError("fill=shared_mean needs the selected columns")
        chosen = columns[:, :, None, :].to(means.dtype)
        shared = (means * chosen).sum(dim=-1, keepdim=True) / chosen.sum(dim=-1, keepdim=True).clamp_min(1)
        return shared.to(dtype)
    if mode == "tensor_mean":
        return means.mean(dim=(1, 3), keepdim=True).to(dtype)
    raise ValueError(f"unknown fill mode {mode!r}")


def destroy_columns(
    x: torch.Tensor, columns: torch.Tensor, valid: torch.Tensor | None, fill: torch.Tensor
) -> torch.Tensor:
    """Return x with every prompt entry of the selected `columns: [B, H, D]` replaced by `fill`.

    Padding positions are left as they are (attention never reads them).
    """
    where = columns[:, :, None, :]
    if valid is not None:
        where = where & valid[:, None, :, None]
    return torch.where(where, fill.to(x.dtype), x)


_MASK31 = 0x7FFFFFFF


def _mix(h: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    """One round of an integer hash kept below 2**31 (products stay inside int64 on every device)."""
    h = (h * 65599 + value) & _MASK31
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & _MASK31
    return ((h ^ (h >> 16)) * 0x45D9F3B) & _MASK31


def shuffled_prompt(
    x: torch.Tensor, valid: torch.Tensor | None, seed: int, salt: int, heads: torch.Tensor
) -> torch.Tensor:
    """`x: [B, H, S, D]` with each head's prompt positions permuted (a magnitude-preserving fill).

    One permutation per sample and head, the same for all of the head's dims, so each token's rotary
    pair moves together; every column keeps its values and norm, only their alignment with the tokens
    is lost. The permutation is a hash of (seed, salt, the model's head index `heads: [H]`, position
    within the prompt), so it does not depend on the batch, its padding or how an engine splits heads.
    Padding positions stay where they are.
    """
    batch, _, length, _ = x.shape
    device = x.device
    if valid is None:
        valid = torch.ones((batch, length), dtype=torch.bool, device=device)
    positions = torch.arange(length, device=device)
    within = (valid.long().cumsum(dim=1) - 1).clamp_min(0)  # [B, S]: position counted over the prompt only
    keys = _mix(_mix(torch.full((), seed * 1_000_003 + salt, device=device), heads[None, :, None]), within[:, None, :])
    after = (1 << 40) + positions  # padding sorts last, in order, in both orderings below
    keys = torch.where(valid[:, None, :], keys, after)  # [B, H, S]
    targets = torch.where(valid, positions, after).argsort(dim=1, stable=True)[:, None, :].expand_as(keys)
    source = torch.empty_like(keys).scatter_(2, targets, keys.argsort(dim=2, stable=True))
    return x.gather(2, source[..., None].expand_as(x))
