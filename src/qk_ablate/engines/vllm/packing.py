"""One vLLM step, planned: which of its flattened sequences are fresh prompts and which decode, and
where each sits in the `[tokens, heads * head_dim]` tensors, as the `[B, S]` grids the core edits.

vLLM mixes, in one step, sequences that start from an empty cache (their query length equals
their sequence length, in the attention metadata's `query_start_loc` / `seq_lens`) with
sequences that decode. `StepPlanner.plan` splits a step into `Part`s once (at its first edited
layer) on the host; every layer then gathers, edits and scatters with the same `Packing`.

Registered inputs: the driver tells the worker every input it sends, with the length of its
prompt. A loglikelihood input's continuation is then not part of its prompt, and a generation
that vLLM preempted and later recomputes (its prompt and the tokens it had generated, prefilled
again) keeps its prompt's selection and leaves the generated tokens as the first run did.
The run record's tally counts each prompt as the HF engine does: a recomputed sequence is not
counted again, and loglikelihood inputs (registered `once`) count once per distinct input minus
its last token, the forward that HF runs once for all the continuations it serves.

`stage=all`: each sequence's decisions are stored at a slot of its own, found again at every
decode step by the sequence's first KV-cache block (with prefix caching off, no two live
sequences share one).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any

import torch

from qk_ablate.core.step import Step
from qk_ablate.engines.vllm.wire import EditCounts, Phase, PromptLengths
from qk_ablate.errors import QKAblateError


@dataclass(frozen=True)
class Packing:
    """Where some of the step's sequences sit in the flat token dimension, as `[B, S]` grids."""

    index: torch.Tensor  # [B, S] flat token index (clamped where not valid)
    valid: torch.Tensor  # [B, S] real tokens of the sequence
    prompt: torch.Tensor  # [B, S] prompt tokens (all real ones, or a registered input's prompt)
    cells: torch.Tensor  # [N] the valid cells of the [B, S] grid, flattened
    rows: torch.Tensor  # [N] their flat token indices

    def gather(self, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens: [T, H, D]` -> `[B, H, S, D]`."""
        return tokens[self.index].transpose(1, 2)

    def scatter(self, tokens: torch.Tensor, x: torch.Tensor) -> None:
        """Write `x: [B, H, S, D]` back over the packed sequences' rows of `tokens: [T, H, D]`, in place."""
        grid = x.transpose(1, 2).flatten(0, 1)
        tokens.index_copy_(0, self.rows, grid.index_select(0, self.cells).to(tokens.dtype))


@dataclass(frozen=True)
class Part:
    """Sequences of one step edited alike: fresh prefills, or decodes (`stage=all`)."""

    phase: Phase
    packing: Packing
    step: Step
    tokens: int  # real tokens in it (for the counts)


class StepPlanner:
    """Splits vLLM steps into `Part`s, knowing the registered inputs and (`stage=all`) the live
    sequences' slots; counts prefills and recomputed sequences into `counts`."""

    def __init__(self, stage_all: bool, counts: EditCounts) -> None:
        self.stage_all = stage_all
        self.counts = counts
        self.prompt_lengths: dict[tuple[int, ...], int] = {}
        self.once = False  # loglikelihood inputs: tally each distinct input-minus-its-last-token once
        self._tallied: set[tuple[int, ...]] = set()
        self._shortest = 1  # the shortest registered input (1: none registered, any query may be fresh)
        self._slot_of: dict[int, int] = {}  # stage=all: a live sequence's first KV block -> its slot

    def register(self, lengths: PromptLengths, once: bool = False) -> None:
        """The inputs about to be sent, by their tokens, with their prompt lengths (empty: forget them);
        `once`: they are loglikelihood inputs, tallied once per input minus its last token."""
        self.prompt_lengths = dict(lengths)
        self.once, self._tallied = once, set()
        self._shortest = min(map(len, self.prompt_lengths), default=1)

    def clear(self) -> None:
        self._slot_of.clear()

    def plan(self, metadata: Any, input_ids: torch.Tensor | None) -> list[Part]:
        """Split the step into fresh sequences and (for `stage=all`) decoding ones, on the host once.

        A step that cannot hold a fresh input (its longest query is shorter than every registered
        input) is left alone at once under `stage=prefill`: decode steps make no host sync.
        """
        longest = getattr(metadata, "max_query_len", None)
        if not self.stage_all and isinstance(longest, int) and longest < self._shortest:
            return []
        starts = metadata.query_start_loc.tolist()
        seq_lens = metadata.seq_lens.tolist()
        query = [starts[i + 1] - starts[i] for i in range(len(seq_lens))]
        fresh = [i for i, q in enumerate(query) if 0 < q == seq_lens[i]]
        decode = [i for i, q in enumerate(query) if 0 < q < seq_lens[i]] if self.stage_all else []
        if not fresh and not decode:
            return []
        device, last = metadata.query_start_loc.device, int(metadata.num_actual_tokens) - 1
        slots = self._slots(metadata, query, fresh, decode) if self.stage_all else None
        parts = []
        if fresh:
            lengths = [query[i] for i in fresh]
            self.counts.prefills += len(fresh)
            prompts, tallied = self._prompt_lengths(input_ids, fresh, starts, lengths)
            packing = pack([starts[i] for i in fresh], lengths, prompts, last, device)
            step = Step(packing.prompt, packing.valid, True, _slot_tensor(slots, 0, device), self._slot_count())
            if tallied is not None and not all(tallied):
                step = replace(step, counted=torch.tensor(tallied, device=device), counted_rows=sum(tallied))
            parts.append(Part("prefill", packing, step, sum(lengths)))
        if decode:
            lengths = [query[i] for i in decode]
            packing = pack([starts[i] for i in decode], lengths, None, last, device)
            step = Step(None, packing.valid, False, _slot_tensor(slots, 1, device), self._slot_count())
            parts.append(Part("decode", packing, step, sum(lengths)))
        return parts

    def _prompt_lengths(
        self, input_ids: torch.Tensor | None, rows: list[int], starts: list[int], lengths: list[int]
    ) -> tuple[list[int] | None, list[bool] | None]:
        """Each fresh sequence's prompt length, from the registered inputs, and whether the tally counts
        it (None, None: nothing registered, all of each is prompt and every one counts)."""
        if not self.prompt_lengths:
            return None, None
        if input_ids is None:
            raise QKAblateError("qk_ablated_vllm could not see the step's input ids, so it cannot tell prompts apart")
        ids = input_ids.tolist()
        found = [self._prompt_length(tuple(ids[starts[i] : starts[i] + n])) for i, n in zip(rows, lengths)]
        return [length for length, _ in found], [tallied for _, tallied in found]

    def _prompt_length(self, tokens: tuple[int, ...]) -> tuple[int, bool]:
        found = self.prompt_lengths.get(tokens)
        if found is not None:
            if not self.once:
                return found, True
            first = tokens[:-1] not in self._tallied
            self._tallied.add(tokens[:-1])
            return found, first
        # Not an input we sent: a preempted generation prefilled again with its generated tokens?
        for length in sorted({len(t) for t in self.prompt_lengths if len(t) < len(tokens)}, reverse=True):
            found = self.prompt_lengths.get(tokens[:length])
            if found is not None:
                self.counts.recomputed += 1
                return found, False  # tallied when it first ran
        return len(tokens), True  # not one of ours: all of it is prompt

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


def pack(
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
