"""How the per-tensor work runs: eager PyTorch (the reference) or fused into a few kernels by `torch.compile`.

Eagerly, selecting and destroying the massive dims of one `[B, H, S, D]` tensor makes a dozen
passes over it (an upcast copy, a mask product, a square, a sum; the same for the fill's mean;
then the write), and the channel-axis quantizer with `protect` about twenty: at 32k tokens on a
GPU that is 5-25% of a prefill. Compiled, each function below is one or two passes. The functions
are the same Python either way, so the eager path stays the reference the compiled one is tested
against (tests/test_fused.py).

`QK_ABLATE_COMPILE`: `auto` (default: compiled for tensors on CUDA, eager elsewhere, where a first
compilation costs more than it saves), `1` (compiled everywhere, CPU through inductor's C++
backend) or `0` (never). Shapes are compiled as dynamic, so prompts of every length share one
kernel; each combination of the constant arguments (fill mode, format, axis) compiles once.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch

from qk_ablate.errors import QKAblateError

MODES = ("auto", "1", "0")


def mode() -> str:
    """The `QK_ABLATE_COMPILE` setting, checked."""
    value = os.environ.get("QK_ABLATE_COMPILE", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise QKAblateError(f"QK_ABLATE_COMPILE={value!r} is not valid; choose auto, 1 or 0")
    return value


def compiles(device: torch.device) -> bool:
    """Whether work on `device` runs compiled under the current setting."""
    chosen = mode()
    return chosen == "1" or (chosen == "auto" and device.type == "cuda")


@functools.cache
def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    return torch.compile(fn, dynamic=True)


def run(fn: Callable[..., Any], x: torch.Tensor, *args: Any) -> Any:
    """`fn(x, *args)`, compiled when `x`'s device calls for it (and not already inside an engine's own
    compiled graph, which traces the plain function into itself)."""
    if compiles(x.device) and not torch.compiler.is_compiling():
        return _compiled(fn)(x, *args)
    return fn(x, *args)
