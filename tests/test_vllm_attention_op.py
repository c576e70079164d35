"""Where the post-RoPE edit sits in vLLM's attention op (`engines/vllm/attention_op.py`), on stand-in
backend objects: K and V are edited before the paged-cache write when the backend writes the cache
in `do_kv_cache_update`, in `forward` when it writes it there, never twice; unwrapping restores the
class's methods."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from qk_ablate.engines.vllm import attention_op
from qk_ablate.engines.vllm.sites import VllmSite


class Impl:
    """A backend implementation: records what it was handed."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []

    def do_kv_cache_update(self, layer: Any, key: torch.Tensor, value: torch.Tensor, *rest: Any) -> None:
        self.seen.append(("write", float(key.sum())))

    def forward(self, layer: Any, query: torch.Tensor, key: Any, value: Any, *rest: Any) -> str:
        self.seen.append(("attend", float(query.sum())))
        return "out"


class Backend:
    def __init__(self, kv_in_forward: bool) -> None:
        self.forward_includes_kv_cache_update = kv_in_forward

    def get_name(self) -> str:
        return "FLASH_ATTN"


class Edits:
    """Zeroes what it is given and records where."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def before_cache_write(self, site: VllmSite, key: torch.Tensor, value: torch.Tensor) -> None:
        self.calls.append("kv@write")
        key.zero_()

    def before_attention(self, site: VllmSite, query: torch.Tensor, key: Any, value: Any) -> None:
        self.calls.append("q+kv@attend" if key is not None else "q@attend")
        query.zero_()
        if key is not None:
            key.zero_()


def site(kv_in_forward: bool) -> VllmSite:
    attn = nn.Module()
    attn.impl = Impl()  # type: ignore[assignment]
    attn.attn_backend = Backend(kv_in_forward)  # type: ignore[assignment]
    return VllmSite(0, attn, None, 2, 1, 4, 2, 1)


@pytest.mark.parametrize(("kv_in_forward", "calls"), [(False, ["kv@write", "q@attend"]), (True, ["q+kv@attend"])])
def test_keys_and_values_are_edited_once_where_the_backend_writes_the_cache(kv_in_forward, calls):
    where, edits = site(kv_in_forward), Edits()
    impl = where.attn.impl
    attention_op.wrap(where, edits)
    q, k, v = torch.ones(3, 2, 4), torch.ones(3, 1, 4), torch.ones(3, 1, 4)
    if not kv_in_forward:
        impl.do_kv_cache_update(None, k, v)
    assert impl.forward(None, q, k, v) == "out"
    assert edits.calls == calls
    assert float(k.sum()) == 0.0 and float(q.sum()) == 0.0
    assert all(total == 0.0 for _, total in impl.seen)  # vLLM's own code saw the edited tensors


def test_unwrap_restores_the_backends_own_methods():
    where, edits = site(False), Edits()
    impl = where.attn.impl
    unwrap = attention_op.wrap(where, edits)
    unwrap()
    assert "forward" not in vars(impl) and "do_kv_cache_update" not in vars(impl)
    q = torch.ones(3, 2, 4)
    impl.forward(None, q, None, None)
    assert edits.calls == [] and float(q.sum()) == 24.0


def test_flashinfer_is_refused_in_one_line_naming_what_works():
    line = attention_op.refused_backend("flashinfer")
    assert line is not None and "FLASHINFER" in line and "FLASH_ATTN" in line and "\n" not in line
    assert attention_op.refused_backend("FLASH_ATTN") is None
    assert attention_op.backend_name(site(False)) == "FLASH_ATTN"
