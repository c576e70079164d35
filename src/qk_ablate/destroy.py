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
    positions); zero: 0. Padding positions never enter a mean.
    """
    if mode == "zero":
        return x.new_zeros(())
    xf = x.float()
    if valid is None:
        column = xf.mean(dim=2, keepdim=True)
    else:
        weight = valid[:, None, :, None].to(xf.dtype)
        column = (xf * weight).sum(dim=2, keepdim=True) / weight.sum(dim=2, keepdim=True).clamp_min(1)
    if mode == "mean":
        return column.to(x.dtype)
    if mode == "shared_mean":
        if columns is None:
            raise ValueError("fill=shared_mean needs the selected columns")
        chosen = columns[:, :, None, :].to(column.dtype)
        shared = (column * chosen).sum(dim=-1, keepdim=True) / chosen.sum(dim=-1, keepdim=True).clamp_min(1)
        return shared.to(x.dtype)
    if mode == "tensor_mean":
        return column.mean(dim=(1, 3), keepdim=True).to(x.dtype)
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
