"""Where the post-RoPE edit runs in vLLM: inside its attention op, which stays eager when the rest
of the model is compiled and replayed as CUDA graphs.

vLLM compiles each model with torch.compile and captures CUDA graphs, but splits the compiled
graph at its attention ops (`compilation_config.splitting_ops`: `unified_kv_cache_update` and
`unified_attention_with_output`) and runs them eagerly between the graph pieces. Both call the
layer's backend implementation, `attn.impl`: `do_kv_cache_update(layer, key, value, ...)` writes
the step's keys and values into the paged cache, then `forward(layer, query, key, value, ...)`
attends. Wrapping those two methods on each layer's `impl` object (instance attributes, so
nothing else changes and `unwrap` restores the class's methods) lets the edit see post-RoPE
q, k, v `[tokens, heads, head_dim]` before vLLM's own code does: K and V before they are cached,
Q before attention; a backend that writes the cache inside its `forward`
(`forward_includes_kv_cache_update`) gets all three there.

What a CUDA graph replays runs no Python: a FULL graph (vLLM's default for uniform decode
batches) replays decode steps without these wrappers, which is right for `stage=prefill` and why
`stage=all` asks vLLM for PIECEWISE graphs (`lm.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from qk_ablate.engines.vllm.sites import VllmSite

_WRAPPED = ("forward", "do_kv_cache_update")

# Backends whose per-layer metadata has no `query_start_loc` / `seq_lens` / `block_table`, which
# `packing.StepPlanner` reads to find each sequence in the step: refused before the first step.
UNPLANNED_BACKENDS = {"FLASHINFER": "its metadata keeps no per-sequence query offsets"}
WORKING_BACKENDS = "FLASH_ATTN (or TRITON_ATTN)"


class OpEdits(Protocol):
    """What the wrappers call: the attachment's edits, in place on `[tokens, heads, head_dim]` tensors."""

    def before_cache_write(self, site: VllmSite, key: torch.Tensor, value: torch.Tensor) -> None: ...

    def before_attention(
        self, site: VllmSite, query: torch.Tensor, key: torch.Tensor | None, value: torch.Tensor | None
    ) -> None: ...


def refused_backend(name: str) -> str | None:
    """One line saying why the edit cannot run under attention backend `name` (None: it can)."""
    why = UNPLANNED_BACKENDS.get(name.upper())
    if why is None:
        return None
    return (
        f"qk_ablated_vllm cannot edit under the attention backend {name.upper()} ({why}); "
        f"pass attention_backend={WORKING_BACKENDS} in model_args"
    )


def backend_name(site: VllmSite) -> str:
    """The attention backend vLLM chose for this layer (e.g. FLASH_ATTN, TRITON_ATTN, CPU_ATTN)."""
    backend = getattr(site.attn, "attn_backend", None)
    return str(backend.get_name()) if backend is not None else type(site.attn.impl).__name__


def wrap(site: VllmSite, edits: OpEdits) -> Callable[[], None]:
    """Route this layer's attention op through `edits`; returns the function that undoes it.

    Where K and V are edited is decided here, once, from the backend: before the cache write when
    the backend writes the cache in `do_kv_cache_update`, in `forward` when it writes it there."""
    impl: Any = site.attn.impl
    saved = {name: impl.__dict__[name] for name in _WRAPPED if name in impl.__dict__}
    attend = impl.forward
    write: Any = getattr(impl, "do_kv_cache_update", None)
    backend = getattr(site.attn, "attn_backend", None)
    kv_in_forward = write is None or bool(getattr(backend, "forward_includes_kv_cache_update", True))

    def forward(layer: Any, query: torch.Tensor, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        if kv_in_forward:
            edits.before_attention(site, query, key, value)
        else:
            edits.before_attention(site, query, None, None)
        return attend(layer, query, key, value, *args, **kwargs)

    impl.forward = forward
    if not kv_in_forward:

        def do_kv_cache_update(layer: Any, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            edits.before_cache_write(site, key, value)
            return write(layer, key, value, *args, **kwargs)

        impl.do_kv_cache_update = do_kv_cache_update

    def unwrap() -> None:
        for name in _WRAPPED:
            impl.__dict__.pop(name, None)
        impl.__dict__.update(saved)

    return unwrap


def capturing() -> bool:
    """A CUDA graph is being captured on this stream: an edit now would be baked into every replay."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
