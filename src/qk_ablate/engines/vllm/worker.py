"""The vLLM engine's attachment point: hooks inside vLLM's model, in the process that holds it.

vLLM flattens a step's sequences into one `[tokens, heads * head_dim]` tensor and mixes, in one
step, sequences that start from an empty cache (their query length equals their sequence length,
in the attention metadata's `query_start_loc` / `seq_lens`) with sequences that decode. Each part
is gathered into the `[B, H, S, D]` layout the HF engine uses, edited by the same `edits.Editor`,
and written back in place (the step's q, k, v are this layer's own projection outputs, read only
by its attention; no copy of the flat tensor is made). Post-RoPE the hook is a forward pre-hook on each layer's `attn` module (it
receives post-RoPE q, k, v and writes k, v into the paged cache itself, so the destroyed prompt
keys stay destroyed for every decode step); pre-RoPE it is a forward hook on the fused
`qkv_proj`. Statistics and masks are computed per sequence from its own tokens, so a prompt's
result never depends on its batch mates.

`stage=all`: each sequence's decisions (columns, fill, protected dims) are stored at a slot of
its own, found again at every decode step by the sequence's first KV-cache block (with prefix
caching off, no two live sequences share one).

Registered inputs (`set_prompt_lengths`): the lm-eval model tells the worker every input it
sends, with the length of its prompt. A loglikelihood input's continuation is then not part of
its prompt, and a generation that vLLM preempted and later recomputes (its prompt and the tokens
it had generated, prefilled again) keeps its prompt's selection and leaves the generated tokens
as the first run did.

Tensor parallelism: each rank holds a slice of the heads (`local_heads`, vLLM's rule, KV heads
replicated when there are fewer than ranks); selection is per head, so it needs nothing from
other ranks, and the random control is drawn for all heads and sliced.

The functions `attach`, `detach`, `set_prompt_lengths` and `counts` are what the lm-eval model
sends to vLLM's workers (`LLM.apply_model`): module-level, so they can travel to another process.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qk_ablate.core.edits import Editor
from qk_ablate.core.spec import InterventionSpec
from qk_ablate.core.step import Step, TensorSite
from qk_ablate.errors import QKAblateError

_ATTRIBUTE = "_qk_ablate_attachment"


@dataclass(frozen=True)
class VllmSite:
    """One layer of a vLLM model: its attention module, fused projection and head counts (local and all)."""

    layer: int
    attn: nn.Module
    qkv_proj: nn.Module | None
    num_heads: int
    num_kv_heads: int
    head_dim: int
    total_heads: int
    total_kv_heads: int


@dataclass(frozen=True)
class Packing:
    """Where some of the step's sequences sit in the flat token dimension, as `[B, S]` grids."""

    index: torch.Tensor  # [B, S] flat token index (clamped where not valid)
    valid: torch.Tensor  # [B, S] real tokens of the sequence
    prompt: torch.Tensor  # [B, S] prompt tokens (all real ones, or a registered input's prompt)
    cells: torch.Tensor  # [N] the valid cells of the [B, S] grid, flattened
    rows: torch.Tensor  # [N] their flat token indices

    def gather(self, flat: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
        """`flat: [T, heads * head_dim]` -> `[B, heads, S, head_dim]`."""
        return flat[self.index].unflatten(-1, (heads, head_dim)).transpose(1, 2)

    def scatter(self, flat: torch.Tensor, x: torch.Tensor) -> None:
        """Write `x: [B, H, S, D]` back over the packed sequences' tokens of `flat`, in place."""
        grid = x.transpose(1, 2).reshape(-1, flat.shape[-1])
        flat.index_copy_(0, self.rows, grid.index_select(0, self.cells).to(flat.dtype))


@dataclass(frozen=True)
class Part:
    """Sequences of one step edited alike: fresh prefills, or decodes (`stage=all`)."""

    phase: str  # "prefill" | "decode"
    packing: Packing
    step: Step
    tokens: int  # real tokens in it (for the counts)


def local_heads(total: int, world: int, rank: int) -> tuple[int, ...]:
    """The heads rank `rank` of `world` holds under vLLM's tensor parallelism (global indices).

    Heads are split in contiguous blocks; with fewer KV heads than ranks, each KV head is
    replicated on `world // total` consecutive ranks.
    """
    if total >= world:
        if total % world:
            raise QKAblateError(f"{total} heads cannot be split over tensor_parallel_size={world}")
        per = total // world
        return tuple(range(rank * per, (rank + 1) * per))
    if world % total:
        raise QKAblateError(f"{total} KV heads cannot be replicated over tensor_parallel_size={world}")
    return (rank // (world // total),)


def find_sites(model: nn.Module) -> list[VllmSite]:
    """Every decoder layer's attention, found from the modules (vLLM's `Attention` has `layer_name`)."""
    sites = []
    for _, module in model.named_modules():
        attn = getattr(module, "attn", None)
        name = getattr(attn, "layer_name", None)
        if attn is None or name is None or not hasattr(attn, "num_kv_heads"):
            continue
        found = re.search(r"layers\.(\d+)\.", name)
        layer = int(found.group(1)) if found else len(sites)
        heads, kv_heads = int(attn.num_heads), int(attn.num_kv_heads)
        sites.append(
            VllmSite(
                layer,
                attn,
                getattr(module, "qkv_proj", None),
                heads,
                kv_heads,
                int(attn.head_size),
                int(getattr(module, "total_num_heads", heads)),
                int(getattr(module, "total_num_kv_heads", kv_heads)),
            )
        )
    if not sites:
        raise QKAblateError(
            f"found no vLLM attention layers in {type(model).__name__}; qk_ablated_vllm cannot reach it"
        )
    return sorted(sites, key=lambda s: s.layer)


def _shard(site: VllmSite) -> dict[str, tuple[int, tuple[int, ...]]] | None:
    """This rank's heads, when vLLM splits them over ranks (None: this process holds them all)."""
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    world = get_tensor_model_parallel_world_size()
    if world == 1:
        return None
    rank = get_tensor_model_parallel_rank()
    kv = (site.total_kv_heads, local_heads(site.total_kv_heads, world, rank))
    return {"q": (site.total_heads, local_heads(site.total_heads, world, rank)), "k": kv, "v": kv}


class VllmAttachment:
    """An intervention installed in one vLLM worker's model; `remove` leaves the model as it was."""

    def __init__(self, model: nn.Module, spec: InterventionSpec) -> None:
        self.model = model
        self.spec = spec
        self.sites = find_sites(model)
        shard = None if spec.is_noop else _shard(self.sites[0])
        self.editor = Editor(spec, spec.layer_indices(len(self.sites)), shard=shard)
        self.prompt_lengths: dict[tuple[int, ...], int] = {}
        self.counts: Counter[str] = Counter()  # sequences and tokens edited, for `counts`
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._metadata: object = None
        self._parts: list[Part] = []
        self._input_ids: torch.Tensor | None = None
        self._slot_of: dict[int, int] = {}  # stage=all: a live sequence's first KV block -> its slot

    def install(self) -> None:
        if self.spec.is_noop:
            return
        embed = next((m for n, m in self.model.named_modules() if n.endswith("embed_tokens")), None)
        if embed is not None:
            self._handles.append(embed.register_forward_pre_hook(self._remember_ids))
        for site in self.sites:
            if self.spec.rope == "post":
                self._handles.append(site.attn.register_forward_pre_hook(self._post_hook(site)))
            elif site.qkv_proj is None:
                raise QKAblateError(f"layer {site.layer} has no fused qkv_proj, so rope=pre cannot reach it on vLLM")
            else:
                self._handles.append(site.qkv_proj.register_forward_hook(self._pre_hook(site)))

    def set_prompt_lengths(self, lengths: dict[tuple[int, ...], int] | None) -> None:
        """Register inputs, by their tokens, with their prompt lengths (None: forget them)."""
        self.prompt_lengths = dict(lengths or {})
        self._metadata = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.editor.clear()
        self._slot_of.clear()

    # ------------------------------------------------------------ per step
    def _remember_ids(self, module: nn.Module, args: tuple) -> None:
        self._input_ids = args[0] if args and isinstance(args[0], torch.Tensor) else None

    def _parts_now(self, site: VllmSite) -> list[Part]:
        """The step's parts, worked out once per step (at its first edited layer)."""
        from vllm.forward_context import get_forward_context

        step = get_forward_context().attn_metadata  # a new object every step
        if step is not self._metadata:
            self._metadata = step
            metadata = step.get(site.attn.layer_name) if isinstance(step, dict) else step
            self._parts = [] if metadata is None else self._plan(metadata)  # None: a warm-up run
        return self._parts

    def _plan(self, metadata: Any) -> list[Part]:
        """Split the step into fresh sequences and (for `stage=all`) decoding ones, on the host once."""
        starts = metadata.query_start_loc.tolist()
        seq_lens = metadata.seq_lens.tolist()
        query = [starts[i + 1] - starts[i] for i in range(len(seq_lens))]
        fresh = [i for i, q in enumerate(query) if 0 < q == seq_lens[i]]
        decode = [i for i, q in enumerate(query) if 0 < q < seq_lens[i]] if self.spec.stage == "all" else []
        if not fresh and not decode:
            return []
        device, last = metadata.query_start_loc.device, int(metadata.num_actual_tokens) - 1
        slots = self._slots(metadata, query, fresh, decode) if self.spec.stage == "all" else None
        parts = []
        if fresh:
            lengths = [query[i] for i in fresh]
            self.counts["prefills"] += len(fresh)
            packing = _packing(
                [starts[i] for i in fresh], lengths, self._prompt_lengths(fresh, starts, lengths), last, device
            )
            step = Step(packing.prompt, packing.valid, True, _slot_tensor(slots, 0, device), self._slot_count())
            parts.append(Part("prefill", packing, step, sum(lengths)))
        if decode:
            lengths = [query[i] for i in decode]
            packing = _packing([starts[i] for i in decode], lengths, None, last, device)
            step = Step(None, packing.valid, False, _slot_tensor(slots, 1, device), self._slot_count())
            parts.append(Part("decode", packing, step, sum(lengths)))
        return parts

    def _prompt_lengths(self, rows: list[int], starts: list[int], lengths: list[int]) -> list[int] | None:
        """Each fresh sequence's prompt length, from the registered inputs (None: all of it is prompt)."""
        if not self.prompt_lengths:
            return None
        if self._input_ids is None:
            raise QKAblateError("qk_ablated_vllm could not see the step's input ids, so it cannot tell prompts apart")
        ids = self._input_ids.tolist()
        return [self._prompt_length(tuple(ids[starts[i] : starts[i] + n])) for i, n in zip(rows, lengths)]

    def _prompt_length(self, tokens: tuple[int, ...]) -> int:
        found = self.prompt_lengths.get(tokens)
        if found is not None:
            return found
        # Not an input we sent: a preempted generation prefilled again with its generated tokens?
        for length in sorted({len(t) for t in self.prompt_lengths if len(t) < len(tokens)}, reverse=True):
            found = self.prompt_lengths.get(tokens[:length])
            if found is not None:
                self.counts["recomputed"] += 1
                return found
        return len(tokens)  # not one of ours: all of it is prompt

    def _slots(
        self, metadata: Any, query: list[int], fresh: list[int], decode: list[int]
    ) -> tuple[list[int], list[int]]:
        """`stage=all`: the store slots of the fresh and the decoding sequences, by their first KV block."""
        firsts = metadata.block_table[: len(query), 0].tolist()
        missing = [i for i in decode if firsts[i] not in self._slot_of]
        if missing:
            raise QKAblateError(
                "qk_ablated_vllm met a decoding sequence whose prefill it never saw (stage=all); "
                "start generation from an empty cache, with prefix caching off"
            )
        if fresh:  # sequences absent from this step have ended (every running one decodes each step)
            live = {firsts[i] for i, q in enumerate(query) if q > 0}
            self._slot_of = {block: slot for block, slot in self._slot_of.items() if block in live}
        for i in fresh:
            self._slot_of.pop(firsts[i], None)  # a first block reused: its old sequence has ended
        taken = set(self._slot_of.values())
        free = (slot for slot in itertools.count() if slot not in taken)  # the smallest ones first
        for i in fresh:
            self._slot_of[firsts[i]] = next(free)
        return [self._slot_of[firsts[i]] for i in fresh], [self._slot_of[firsts[i]] for i in decode]

    def _slot_count(self) -> int:
        return max(self._slot_of.values(), default=-1) + 1

    # ------------------------------------------------------------ hooks
    def _edit(self, site: VllmSite, name: str, where: str, flat: torch.Tensor, heads: int) -> None:
        """Edit the step's sequences in `flat: [T, heads * head_dim]`, in place."""
        tensor_site = TensorSite(site.layer, name, where)  # type: ignore[arg-type]
        if not self.editor.changes(tensor_site):  # no gather for a tensor left alone
            return
        for part in self._parts_now(site):
            new = self.editor.edit(tensor_site, part.packing.gather(flat, heads, site.head_dim), part.step)
            if new is not None:
                part.packing.scatter(flat, new)
                self.counts[f"{part.phase}:{site.layer}:{name}"] += part.tokens

    def _post_hook(self, site: VllmSite):
        def hook(module: nn.Module, args: tuple) -> None:
            query, key, value = args[:3]
            self._edit(site, "q", "post", query, site.num_heads)
            self._edit(site, "k", "post", key, site.num_kv_heads)
            self._edit(site, "v", "post", value, site.num_kv_heads)

        return hook

    def _pre_hook(self, site: VllmSite):
        q_width, kv_width = site.num_heads * site.head_dim, site.num_kv_heads * site.head_dim

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            parts = out.split([q_width, kv_width, kv_width], dim=-1)  # views: edited in place
            for name, part, heads in zip("qkv", parts, (site.num_heads, site.num_kv_heads, site.num_kv_heads)):
                self._edit(site, name, "pre", part, heads)

        return hook


def _packing(
    starts: list[int], lengths: list[int], prompt_lengths: list[int] | None, last: int, device: torch.device
) -> Packing:
    """The `[B, S]` grids of sequences starting at flat `starts` with `lengths` tokens."""
    offsets = torch.arange(max(lengths))
    valid = offsets[None, :] < torch.tensor(lengths)[:, None]
    index = (torch.tensor(starts)[:, None] + offsets[None, :]).clamp(max=last)
    prompt = valid if prompt_lengths is None else valid & (offsets[None, :] < torch.tensor(prompt_lengths)[:, None])
    cells = valid.flatten().nonzero().flatten()
    return Packing(
        index.to(device), valid.to(device), prompt.to(device), cells.to(device), index.flatten()[cells].to(device)
    )


def _slot_tensor(slots: tuple[list[int], list[int]] | None, which: int, device: torch.device) -> torch.Tensor | None:
    return None if slots is None else torch.tensor(slots[which], device=device)


# ---------------------------------------------------------------- sent to the worker


def attach(model: nn.Module, spec: dict[str, Any]) -> int:
    """Install `spec` on this worker's model (replacing any earlier one); returns its layer count."""
    detach(model)
    attachment = VllmAttachment(model, InterventionSpec(**spec))
    attachment.install()
    setattr(model, _ATTRIBUTE, attachment)
    return len(attachment.sites)


def detach(model: nn.Module) -> None:
    """Remove this worker's attachment, if any."""
    attachment = getattr(model, _ATTRIBUTE, None)
    if attachment is not None:
        attachment.remove()
        delattr(model, _ATTRIBUTE)


def set_prompt_lengths(model: nn.Module, lengths: dict[tuple[int, ...], int] | None) -> None:
    """Register the inputs about to be sent, by their tokens, with their prompt lengths (None: forget)."""
    attachment = getattr(model, _ATTRIBUTE, None)
    if attachment is not None:
        attachment.set_prompt_lengths(lengths)


def counts(model: nn.Module) -> dict[str, int]:
    """What this worker's attachment has edited: sequences prefilled and recomputed, tokens per
    `phase:layer:tensor` (`prefill`: prompts' tokens, `decode`: decoded tokens of `stage=all`), and
    per tensor the (head, dim) columns selected (`selected:q`) from `heads:q` prompt heads."""
    attachment = getattr(model, _ATTRIBUTE, None)
    if attachment is None:
        return {}
    tally = attachment.editor.tally()
    return {
        **attachment.counts,
        **{f"selected:{n}": t for n, t in tally.selected.items()},
        **{f"heads:{n}": h for n, h in tally.heads.items()},
    }
