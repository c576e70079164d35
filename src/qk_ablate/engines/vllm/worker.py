"""The vLLM engine's attachment: edits inside vLLM's model, in the process that holds it.

Each step's sequences are gathered from vLLM's `[tokens, heads, head_dim]` tensors into the
`[B, H, S, D]` layout the HF engine uses (`packing`), edited by the same `edits.Editor`, and
written back in place (the step's q, k, v are this layer's own projection outputs, read only by
its attention; no copy of the token tensor is made). Post-RoPE the edit runs inside vLLM's
attention op (`attention_op`: K and V before they are written to the paged cache, so the
destroyed prompt keys stay destroyed for every decode step, then Q), which vLLM keeps eager
between its compiled, graph-captured pieces; pre-RoPE it is a forward hook on the fused
`qkv_proj`, which only runs in eager mode (`lm.py` asks for it). Statistics and masks are
computed per sequence from its own tokens, so a prompt's result never depends on its batch mates.

Tensor parallelism: each rank holds a slice of the heads (`sites.local_heads`, vLLM's rule, KV
heads replicated when there are fewer than ranks); selection is per head, so it needs nothing
from other ranks, and the random control is drawn for all heads and sliced. A replicated KV head
is edited on every rank that holds it and tallied on the first.

`VllmAttachment` keeps the HF `Attachment` contract (`attach() -> self`, `remove()`, `tally()`,
`spec`, `editor`); the driver reaches it through `extension.QKAblateWorkerExtension`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from qk_ablate.core.edits import Editor
from qk_ablate.core.record import SelectionTally
from qk_ablate.core.spec import InterventionSpec
from qk_ablate.core.step import TensorSite
from qk_ablate.core.vocabulary import TENSOR_NAMES, TensorName
from qk_ablate.engines.vllm import attention_op
from qk_ablate.engines.vllm.packing import Part, StepPlanner
from qk_ablate.engines.vllm.sites import VllmSite, find_sites, local_heads
from qk_ablate.engines.vllm.wire import EditCounts, PromptLengths
from qk_ablate.errors import QKAblateError


class VllmAttachment:
    """An intervention attached to one vLLM worker's model; `remove` leaves the model as it was."""

    def __init__(self, model: nn.Module, spec: InterventionSpec) -> None:
        self.model = model
        self.spec = spec
        self.sites = find_sites(model)
        shard = None if spec.is_noop else _shard(self.sites[0])
        self._kv_copy = shard is not None and _holds_a_kv_copy(self.sites[0])
        self.editor = Editor(spec, spec.layer_indices(len(self.sites)), shard=shard)
        self.counts = EditCounts()  # sequences and tokens edited so far
        self.planner = StepPlanner(spec.stage == "all", self.counts)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._unwraps: list[Callable[[], None]] = []
        self._metadata: object = None
        self._planned = False  # `_parts` belong to the step now running
        self._parts: list[Part] = []
        self._input_ids: torch.Tensor | None = None

    def attach(self) -> VllmAttachment:
        """Install the edits (idempotent; a no-op spec installs none)."""
        if self._handles or self.spec.is_noop:
            return self
        self._handles.append(self.model.register_forward_pre_hook(self._remember_ids, with_kwargs=True))
        if self.spec.rope == "post":
            self._unwraps = [attention_op.wrap(site, self) for site in self.sites]
            return self
        for site in self.sites:
            if site.qkv_proj is None:
                self.remove()
                raise QKAblateError(f"layer {site.layer} has no fused qkv_proj, so rope=pre cannot reach it on vLLM")
            self._handles.append(site.qkv_proj.register_forward_hook(self._pre_hook(site)))
        return self

    def refusal(self) -> str | None:
        """Why this worker cannot run the spec (one line), or None; asked by the driver before `attach`."""
        return None if self.spec.is_noop else attention_op.refused_backend(attention_op.backend_name(self.sites[0]))

    def remove(self) -> None:
        """Remove every hook and wrapper and forget the prompts' decisions."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for unwrap in self._unwraps:
            unwrap()
        self._unwraps.clear()
        self.editor.clear()
        self.planner.clear()

    def tally(self) -> SelectionTally:
        """What the selection has chosen so far, on this worker's heads; K and V left out on a rank whose
        KV heads are copies of another rank's, so the sum over ranks counts each head once."""
        tally = self.editor.tally()
        if not self._kv_copy:
            return tally
        return SelectionTally(
            {n: c for n, c in tally.selected.items() if n == "q"}, {n: c for n, c in tally.heads.items() if n == "q"}
        )

    def register(self, lengths: PromptLengths, once: bool = False) -> None:
        """Register the inputs about to be sent, by their tokens, with their prompt lengths (empty: forget;
        `once`: loglikelihood inputs, see `StepPlanner.register`)."""
        self.planner.register(lengths, once)
        self._planned = False

    # ------------------------------------------------------------ per step
    def _remember_ids(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Runs at the start of every forward that Python sees (not on a replayed FULL CUDA graph)."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._input_ids = ids if isinstance(ids, torch.Tensor) else None
        self._planned = False  # a new step, even if vLLM hands it a metadata object it used before

    def _parts_now(self, site: VllmSite) -> list[Part]:
        """The step's parts, worked out once per step (at its first edited layer); none while a CUDA
        graph is captured (vLLM's dummy batches) or in warm-up steps without metadata."""
        from vllm.forward_context import get_forward_context

        step = get_forward_context().attn_metadata
        if not self._planned or step is not self._metadata:
            self._metadata, self._planned = step, True
            metadata = step.get(site.attn.layer_name) if isinstance(step, dict) else step
            if metadata is None or attention_op.capturing():
                self._parts = []
            else:
                self._parts = self.planner.plan(metadata, self._input_ids)
        return self._parts

    def _edit(self, site: VllmSite, name: TensorName, where: str, tokens: torch.Tensor) -> None:
        """Edit the step's sequences in `tokens: [T, heads, head_dim]`, in place."""
        tensor_site = TensorSite(site.layer, name, where)  # type: ignore[arg-type]
        if not self.editor.changes(tensor_site):  # no gather for a tensor left alone
            return
        for part in self._parts_now(site):
            new = self.editor.edit(tensor_site, part.packing.gather(tokens), part.step)
            if new is not None:
                part.packing.scatter(tokens, new)
                self.counts.add(part.phase, site.layer, name, part.tokens)

    def before_cache_write(self, site: VllmSite, key: torch.Tensor, value: torch.Tensor) -> None:
        """Post-RoPE K and V, edited before vLLM writes them into the paged cache."""
        self._edit(site, "k", "post", key)
        self._edit(site, "v", "post", value)

    def before_attention(
        self, site: VllmSite, query: torch.Tensor, key: torch.Tensor | None, value: torch.Tensor | None
    ) -> None:
        """Post-RoPE Q, and K, V when given (a backend that writes the cache in its own forward), before attention."""
        self._edit(site, "q", "post", query)
        if key is not None and value is not None:
            self._edit(site, "k", "post", key)
            self._edit(site, "v", "post", value)

    def _pre_hook(self, site: VllmSite) -> Callable[[nn.Module, tuple, Any], None]:
        heads = (site.num_heads, site.num_kv_heads, site.num_kv_heads)
        widths = [count * site.head_dim for count in heads]

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            parts = out.split(widths, dim=-1)  # views: edited in place
            for name, part, count in zip(TENSOR_NAMES, parts, heads):
                self._edit(site, name, "pre", part.unflatten(-1, (count, site.head_dim)))

        return hook


def _shard(site: VllmSite) -> dict[TensorName, tuple[int, tuple[int, ...]]] | None:
    """This rank's heads, when vLLM splits them over ranks (None: this process holds them all)."""
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    world = get_tensor_model_parallel_world_size()
    if world == 1:
        return None
    rank = get_tensor_model_parallel_rank()
    kv = (site.total_kv_heads, local_heads(site.total_kv_heads, world, rank))
    return {"q": (site.total_heads, local_heads(site.total_heads, world, rank)), "k": kv, "v": kv}


def _holds_a_kv_copy(site: VllmSite) -> bool:
    """With fewer KV heads than ranks each KV head sits on several ranks (`local_heads`); every rank of
    such a group but its first holds a copy."""
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    world = get_tensor_model_parallel_world_size()
    if site.total_kv_heads >= world:
        return False
    return get_tensor_model_parallel_rank() % (world // site.total_kv_heads) != 0
