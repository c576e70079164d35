"""How the per-tensor work runs: eager PyTorch (the reference) or fused into a few kernels by `torch.compile`.

Eagerly, selecting and destroying the massive dims of one `[B, H, S, D]` tensor makes a dozen
passes over it (an upcast copy, a mask product, a square, a sum; the same for the fill's mean;
then the write), and the channel-axis quantizer with `protect` about twenty: at 32k tokens on a
GPU that is 5-25% of a prefill. Compiled, each function below is one or two passes. The functions
are the same Python either way, so the eager path stays the reference the compiled one is tested
against (tests/test_fused.py).

`QK_ABLATE_COMPILE`: `auto` (default: compiled for tensors on CUDA, eager elsewhere, where a first
compilation costs more than it saves), `1` (compiled everywhere, CPU through inductor's C++
backend) or `0` (never).

Batch size and sequence length are compiled as symbols, so prompts of every length share one
kernel; heads and head dim stay constants: with them symbolic too, the kernels lose their
vectorised loads and ran 2-4x slower on an H100 (`statistics` of a 32k-token Q: 0.37 ms against
0.17). So each combination of head count, batch of one or more, mask or none and the constant
arguments (fill mode, format, axis) compiles once; dynamo's per-function recompile limit is
raised to `RECOMPILES` for that (a process-wide setting, only ever raised).
"""

from __future__ import annotations

import functools
import os
import types
from collections.abc import Callable
from typing import Any

import torch

from qk_ablate.errors import QKAblateError

MODES = ("auto", "1", "0")
RECOMPILES = 64


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
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILES)
    return torch.compile(fn, dynamic=False)


def run(fn: Callable[..., Any], x: torch.Tensor, *args: Any, into: bool = False) -> Any:
    """`fn(x, *args)`, compiled when `x`'s device calls for it (and not already inside an engine's own
    compiled graph, which traces the plain function into itself).

    `into`: write the result into `x` itself and return `x`. The attention wrapper edits the query
    and the cache's keys/values so: no new tensor, and the query keeps its memory layout (a query
    laid out otherwise than transformers' transposed `[B, S, H, D]` buffer cost the attention
    kernel a strided copy, 18 ms of a 32k-token prefill on an H100). Compiled, the write is part
    of the one kernel.
    """
    work = _writer(fn) if into else fn
    if compiles(x.device) and not torch.compiler.is_compiling():
        for tensor in (x, *args):
            _vary(tensor)
        return _compiled(work)(x, *args)
    return work(x, *args)


@functools.cache
def _writer(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` writing its result into its first argument. Each `fn` gets its own code object, since
    dynamo counts compiled variants (and their limit) per code object."""

    def write(x: torch.Tensor, *args: Any) -> torch.Tensor:
        return x.copy_(fn(x, *args))

    code = write.__code__.replace(co_name=f"{fn.__name__}_into")
    return types.FunctionType(code, write.__globals__, code.co_name, None, write.__closure__)


def _vary(tensor: Any) -> None:
    """Mark what changes from call to call as symbolic: the batch (dim 0 of every tensor of two dims or
    more) and the sequence (dim 2 of a `[B, H, S, D]` tensor, dim 1 of a `[B, S]` mask)."""
    import torch._dynamo

    if not isinstance(tensor, torch.Tensor) or tensor.dim() < 2:
        return
    torch._dynamo.maybe_mark_dynamic(tensor, 0)
    if tensor.dim() in (2, 4):
        torch._dynamo.maybe_mark_dynamic(tensor, tensor.dim() // 2)
