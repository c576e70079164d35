"""Fake (simulated) quantizers for attention tensors such as queries and keys.

The tensors are rounded onto a low-precision grid and immediately dequantised, all in float32,
so an ablation can measure what the rounding error alone does to attention without any
low-precision kernels.  The choice of statistics axis follows the KV-cache literature (KIVI):
``axis="channel"`` gives each (head, dim) column its own scale across positions, which copes
with the few massive Q/K channels of RoPE models; ``axis="token"`` shares one scale across the
head dims of a position, so one massive channel crushes the small ones next to it.

Layout everywhere: ``x`` is ``[B, H, S, D]`` (batch, heads, sequence positions, head dim).

Design choices worth knowing:

* Padding positions (``valid`` False) and protected ``(head, dim)`` columns are left out of
  every statistic and returned bit-exactly (``torch.where`` against the original tensor).
* Channel groups (``axis="channel"``, ``group=g``) are counted over the *valid* positions of
  each sample, from its first valid position: the k-th valid token falls in group ``k // g``.
  That makes the result independent of how much left padding a batch adds; the last group of
  a sample may be shorter than ``g``.
* Asymmetric int uses a float zero point (the group minimum, as KIVI does):
  ``q = round((x - min) / scale)``, ``x_hat = min + q * scale`` with
  ``scale = (max - min) / (2**N - 1)``.
* The grid ends are pinned to the statistics they came from (the absmax element dequantises to
  exactly the absmax, the min/max to exactly the min/max, fp8's 448 to exactly the absmax).
  Float32 does not guarantee ``(absmax / q) * q == absmax``; without the pinning a second pass
  could see a slightly different scale.  With it, quantizing twice equals quantizing once
  (exactly, for float32 inputs).
* A group whose range is zero (all zeros, or a constant for asym) or that holds no
  contributing element is returned unchanged: no NaN, and a constant is already on the grid.
"""

from __future__ import annotations

import torch

from qk_ablate.core.vocabulary import BITS, check_quantizer
from qk_ablate.errors import QKAblateError

FP8_MAX = 448.0  # largest finite float8_e4m3fn value

__all__ = ["FP8_MAX", "fake_quantize"]


def fake_quantize(
    x: torch.Tensor,
    fmt: str,
    axis: str,
    group: int | None = None,
    sym: bool = True,
    valid: torch.Tensor | None = None,
    protect: torch.Tensor | None = None,
) -> torch.Tensor:
    """Round ``x`` ([B, H, S, D]) onto a ``fmt`` grid and back, to simulate quantization error.

    ``axis`` picks what one scale covers: "token" = the D dims of one (b, h, s) (in groups of
    ``group`` dims), "channel" = the valid positions of one (b, h, d) (in groups of ``group``
    valid positions), "tensor" = everything valid in one sample b.  ``valid`` ([B, S] bool)
    marks real tokens; ``protect`` ([B, H, D] bool) marks (head, dim) columns kept in full
    precision.  Padding and protected entries never affect a scale and come back unchanged.
    Returns a tensor of x's shape and dtype.
    """
    _check_args(x, fmt, axis, group, sym)
    B, H, S, D = x.shape
    mask = _contributing_mask(x, valid, protect)  # [B, H, S, D] bool, or None when all count
    xf = x.to(torch.float32)

    if axis == "token":
        g = D if group is None else group
        shape5 = (B, H, S, D // g, g)
        q = _quantize_reduced(xf.reshape(shape5), fmt, sym, _reshape(mask, shape5), dims=(-1,))
        q = q.reshape(B, H, S, D)
    elif axis == "tensor":
        q = _quantize_reduced(xf, fmt, sym, mask, dims=(1, 2, 3))
    elif group is None or group >= S:  # channel, one group per column: a masked reduction over S
        q = _quantize_reduced(xf, fmt, sym, mask, dims=(2,))
    else:  # channel, groups of `group` valid positions
        q = _quantize_channel(xf, fmt, sym, valid, mask, group)

    q = q.to(x.dtype)
    if mask is None:
        return q
    return torch.where(mask, q, x)


# --------------------------------------------------------------------------------------------
# argument checks


def _check_args(x: torch.Tensor, fmt: str, axis: str, group: int | None, sym: bool) -> None:
    if group is not None and (isinstance(group, bool) or not isinstance(group, int) or group < 1):
        raise QKAblateError(f"group must be a positive integer or None, got {group!r}")
    check_quantizer(fmt, axis, group or 0, sym)
    if x.dim() != 4:
        raise QKAblateError(f"fake_quantize expects x of shape [B, H, S, D], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise QKAblateError(f"fake_quantize expects a floating-point tensor, got {x.dtype}")
    if group is not None and axis == "token" and x.shape[-1] % group != 0:
        raise QKAblateError(f"token groups must divide the head dim: D={x.shape[-1]} is not divisible by group={group}")


def _contributing_mask(
    x: torch.Tensor, valid: torch.Tensor | None, protect: torch.Tensor | None
) -> torch.Tensor | None:
    """[B, H, S, D] bool: True where an element is quantized and counts towards its scale."""
    B, H, S, D = x.shape
    mask = None
    if valid is not None:
        if tuple(valid.shape) != (B, S):
            raise QKAblateError(f"valid must have shape [B, S] = {(B, S)}, got {tuple(valid.shape)}")
        mask = valid.to(device=x.device, dtype=torch.bool)[:, None, :, None].expand(B, H, S, D)
    if protect is not None:
        if tuple(protect.shape) != (B, H, D):
            raise QKAblateError(f"protect must have shape [B, H, D] = {(B, H, D)}, got {tuple(protect.shape)}")
        keep = ~protect.to(device=x.device, dtype=torch.bool)[:, :, None, :].expand(B, H, S, D)
        mask = keep if mask is None else mask & keep
    return mask


def _reshape(mask: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
    return None if mask is None else mask.reshape(shape)


# --------------------------------------------------------------------------------------------
# statistics


def _quantize_reduced(
    x: torch.Tensor, fmt: str, sym: bool, mask: torch.Tensor | None, dims: tuple[int, ...]
) -> torch.Tensor:
    """Quantize with one set of statistics per slice reduced over ``dims`` (kept for broadcast)."""
    if sym:
        a = x.abs() if mask is None else torch.where(mask, x.abs(), 0.0)
        return _apply_sym(x, fmt, a.amax(dim=dims, keepdim=True))
    lo_src = x if mask is None else torch.where(mask, x, torch.inf)
    hi_src = x if mask is None else torch.where(mask, x, -torch.inf)
    lo = lo_src.amin(dim=dims, keepdim=True)
    hi = hi_src.amax(dim=dims, keepdim=True)
    return _apply_asym(x, BITS[fmt], lo, hi)


def _quantize_channel(
    x: torch.Tensor, fmt: str, sym: bool, valid: torch.Tensor | None, mask: torch.Tensor | None, g: int
) -> torch.Tensor:
    """Per (b, h, d) statistics over groups of ``g`` valid positions, via scatter/gather on S."""
    B, H, S, D = x.shape
    n_groups = -(-S // g)  # most groups any sample can have; index n_groups collects padding
    if valid is None:
        gid = torch.div(torch.arange(S, device=x.device), g, rounding_mode="floor").expand(B, S)
    else:
        v = valid.to(device=x.device, dtype=torch.bool)
        rank = torch.cumsum(v.to(torch.int64), dim=1) - 1  # index among the sample's valid tokens
        gid = torch.where(v, torch.div(rank.clamp(min=0), g, rounding_mode="floor"), n_groups)
    index = gid[:, None, :, None].expand(B, H, S, D)

    def group_reduce(src: torch.Tensor, init: float, reduce: str) -> torch.Tensor:
        out = torch.full((B, H, n_groups + 1, D), init, dtype=src.dtype, device=src.device)
        out = out.scatter_reduce(2, index, src, reduce=reduce, include_self=True)
        return out.gather(2, index)  # back to [B, H, S, D]: each element sees its group's value

    if sym:
        a = x.abs() if mask is None else torch.where(mask, x.abs(), 0.0)
        return _apply_sym(x, fmt, group_reduce(a, 0.0, "amax"))
    lo_src = x if mask is None else torch.where(mask, x, torch.inf)
    hi_src = x if mask is None else torch.where(mask, x, -torch.inf)
    lo = group_reduce(lo_src, torch.inf, "amin")
    hi = group_reduce(hi_src, -torch.inf, "amax")
    return _apply_asym(x, BITS[fmt], lo, hi)


# --------------------------------------------------------------------------------------------
# elementwise rounding given broadcastable statistics


def _apply_sym(x: torch.Tensor, fmt: str, absmax: torch.Tensor) -> torch.Tensor:
    if fmt == "fp8":
        return _apply_fp8(x, absmax)
    qmax = float(2 ** (BITS[fmt] - 1) - 1)
    scale = absmax / qmax
    ok = (scale > 0) & torch.isfinite(scale)  # zero range (or underflow): leave unchanged
    safe = torch.where(ok, scale, 1.0)
    k = torch.round(x / safe).clamp(-qmax, qmax)
    deq = k * safe
    deq = torch.where(k == qmax, absmax, torch.where(k == -qmax, -absmax, deq))  # pin the ends
    return torch.where(ok, deq, x)


def _apply_asym(x: torch.Tensor, bits: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    top = float(2**bits - 1)
    scale = (hi - lo) / top
    ok = (hi > lo) & torch.isfinite(scale) & (scale > 0)  # empty or constant group: unchanged
    safe = torch.where(ok, scale, 1.0)
    base = torch.where(ok, lo, 0.0)
    k = torch.round((x - base) / safe).clamp(0.0, top)
    deq = torch.where(k == top, hi, base + k * safe)  # k == 0 gives exactly lo already
    return torch.where(ok, deq, x)


def _apply_fp8(x: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    scale = absmax / FP8_MAX
    ok = (scale > 0) & torch.isfinite(scale)
    safe = torch.where(ok, scale, 1.0)
    y = (x / safe).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(torch.float32)
    deq = y * safe
    deq = torch.where(y == FP8_MAX, absmax, torch.where(y == -FP8_MAX, -absmax, deq))
    return torch.where(ok, deq, x)
