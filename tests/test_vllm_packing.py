"""The vLLM engine's step planner (`engines/vllm/packing.py`) on hand-made attention metadata: which
sequences of a step are fresh prompts, their registered prompt lengths, the `[B, S]` grids over
vLLM's `[tokens, heads, head_dim]` tensors, and decode steps left alone without a host sync."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qk_ablate.engines.vllm.packing import StepPlanner
from qk_ablate.engines.vllm.wire import EditCounts


@dataclass
class Metadata:
    """What FLASH_ATTN / TRITON_ATTN / CPU_ATTN metadata carry that the planner reads."""

    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    num_actual_tokens: int
    max_query_len: int
    block_table: torch.Tensor


class DeviceOnly:
    """Metadata whose tensors must not be read: reading one would be a host sync."""

    max_query_len = 1

    def __getattr__(self, name: str):
        raise AssertionError(f"the planner read {name} on a step it should have left alone")


def metadata(query: list[int], seq_lens: list[int]) -> Metadata:
    starts = torch.tensor([0, *query]).cumsum(0)
    blocks = torch.arange(len(query))[:, None] * 10
    return Metadata(starts, torch.tensor(seq_lens), int(starts[-1]), max(query), blocks)


def test_a_decode_step_is_left_alone_without_reading_the_metadata():
    planner = StepPlanner(stage_all=False, counts=EditCounts())
    planner.register({(5, 6, 7): 2, (1, 2, 3, 4): 4})  # the shortest registered input has 3 tokens
    assert planner.plan(DeviceOnly(), None) == []


def test_without_registered_inputs_a_decode_step_is_read_and_holds_no_prefill():
    planner = StepPlanner(stage_all=False, counts=EditCounts())
    assert planner.plan(metadata([1, 1], [9, 12]), torch.tensor([3, 4])) == []


def test_a_mixed_step_packs_its_fresh_prompts_with_their_registered_lengths():
    counts = EditCounts()
    planner = StepPlanner(stage_all=False, counts=counts)
    planner.register({(1, 2, 3, 4): 3, (7, 8): 2})  # a loglikelihood input: 3 context tokens + 1 continuation
    # a decode (1 token of a 9-token sequence), then two fresh inputs of 4 and 2 tokens
    ids = torch.tensor([50, 1, 2, 3, 4, 7, 8])
    (part,) = planner.plan(metadata([1, 4, 2], [9, 4, 2]), ids)
    assert part.phase == "prefill" and part.tokens == 6 and counts.prefills == 2
    assert part.step.prompt.tolist() == [[True, True, True, False], [True, True, False, False]]
    assert part.step.tokens.tolist() == [[True, True, True, True], [True, True, False, False]]
    tokens = torch.arange(7 * 2 * 3, dtype=torch.float32).reshape(7, 2, 3)  # [T, heads, head_dim]
    grid = part.packing.gather(tokens)
    assert grid.shape == (2, 2, 4, 3)  # [B, H, S, D]
    assert torch.equal(grid[0, :, :, :].transpose(0, 1), tokens[1:5])
    assert torch.equal(grid[1, :, :2].transpose(0, 1), tokens[5:7])
    edited = tokens.clone()
    part.packing.scatter(edited, -grid)
    assert torch.equal(edited[1:], -tokens[1:]) and torch.equal(edited[0], tokens[0])  # the decode row untouched


def test_loglikelihood_inputs_are_tallied_once_per_input_minus_its_last_token():
    """HF runs one forward for the continuations that share context + continuation[:-1] (lm-eval's
    logits cache), vLLM one per input: registered `once`, the repeats are edited but not tallied,
    in the same step or a later one, so the run record's `heads` is the same on both engines."""
    planner = StepPlanner(stage_all=False, counts=EditCounts())
    # two one-token continuations of context (1, 2, 3), and a two-token one whose input differs
    planner.register({(1, 2, 3, 8): 3, (1, 2, 3, 9): 3, (1, 2, 3, 8, 9): 3}, once=True)
    (part,) = planner.plan(metadata([4, 4], [4, 4]), torch.tensor([1, 2, 3, 8, 1, 2, 3, 9]))
    assert part.step.counted.tolist() == [True, False] and part.step.counted_rows == 1
    (part,) = planner.plan(metadata([5, 4], [5, 4]), torch.tensor([1, 2, 3, 8, 9, 1, 2, 3, 8]))
    assert part.step.counted.tolist() == [True, False]  # a new input; the first one's repeat
    planner.register({(1, 2, 3, 8): 3, (1, 2, 3, 9): 3})  # generation prompts: every one is tallied
    (part,) = planner.plan(metadata([4, 4], [4, 4]), torch.tensor([1, 2, 3, 8, 1, 2, 3, 9]))
    assert part.step.counted is None


def test_the_editor_tallies_only_the_counted_rows():
    from qk_ablate.core.edits import Editor
    from qk_ablate.core.spec import InterventionSpec
    from qk_ablate.core.step import Step, TensorSite

    x = torch.ones(2, 3, 5, 8)  # [B, H, S, D]
    x[..., 2] = 50.0  # one massive column in every head
    valid = torch.ones(2, 5, dtype=torch.bool)
    site = TensorSite(0, "q", "post")
    once = Editor(InterventionSpec(ablate="massive"), frozenset({0}))
    once.edit(site, x.clone(), Step(valid, valid, True, counted=torch.tensor([True, False]), counted_rows=1))
    every = Editor(InterventionSpec(ablate="massive"), frozenset({0}))
    every.edit(site, x.clone(), Step(valid, valid, True))
    assert once.tally().summary() == {"q": {"dims_per_head": 1.0, "heads": 3}}
    assert every.tally().summary() == {"q": {"dims_per_head": 1.0, "heads": 6}}
