"""The parts of the intervention core that the vLLM engine leans on, pinned without vLLM:
decisions stored per sequence slot (continuous batching) and heads split over ranks."""

from __future__ import annotations

import pytest
import torch

from qk_ablate import InterventionSpec, QKAblateError
from qk_ablate.core.edits import Editor
from qk_ablate.core.step import PREFILL, Step, TensorSite
from qk_ablate.engines.vllm.sites import local_heads

LAYERS = frozenset({0})


def _site(name: str) -> TensorSite:
    return TensorSite(0, name, "post")  # type: ignore[arg-type]


def _tensor(batch: int, heads: int = 4, length: int = 12, dim: int = 16, seed: int = 0) -> torch.Tensor:
    """Random Q/K with two planted massive columns per head, different ones per sample."""
    x = torch.randn(batch, heads, length, dim, generator=torch.Generator().manual_seed(seed))
    for b in range(batch):
        x[b, :, :, (3 * b) % dim] += 40.0
        x[b, :, :, (3 * b + 5) % dim] -= 30.0
    return x


@pytest.mark.parametrize(
    "args",
    [
        {"ablate": "massive"},
        {"ablate": "massive", "fill": "zero"},
        {"ablate": "nonmassive"},
        {"quant": "int4", "protect": "massive"},
    ],
)
def test_decisions_kept_by_slot_equal_those_kept_for_the_batch(args):
    """A prefill of samples at slots (3, 0), then decode steps that meet them in another order and
    alone, edit each sample's new tokens exactly as a batch that stays together (HF generation)."""
    spec = InterventionSpec.from_args({**args, "stage": "all"})
    prompt, new = _tensor(2), _tensor(2, length=1, seed=1)
    whole = Editor(spec, LAYERS)
    expected_prompt = whole.edit(_site("k"), prompt, Step(None, None, prefill=True))
    expected_new = whole.edit(_site("k"), new, Step(None, None, prefill=False))

    slotted = Editor(spec, LAYERS)
    got_prompt = slotted.edit(_site("k"), prompt, Step(None, None, True, torch.tensor([3, 0]), 4))
    torch.testing.assert_close(got_prompt, expected_prompt, rtol=0, atol=0)
    swapped = slotted.edit(_site("k"), new.flip(0), Step(None, None, False, torch.tensor([0, 3]), 4))
    torch.testing.assert_close(swapped.flip(0), expected_new, rtol=0, atol=0)
    alone = slotted.edit(_site("k"), new[1:], Step(None, None, False, torch.tensor([0]), 4))
    torch.testing.assert_close(alone, expected_new[1:], rtol=0, atol=0)


def test_a_new_prefill_at_one_slot_leaves_the_other_slots_decisions():
    spec = InterventionSpec(ablate="massive", stage="all")
    editor = Editor(spec, LAYERS)
    first, second, new = _tensor(2), _tensor(1, seed=2), _tensor(2, length=1, seed=3)
    editor.edit(_site("q"), first, Step(None, None, True, torch.tensor([0, 1]), 2))
    before = editor.edit(_site("q"), new[:1], Step(None, None, False, torch.tensor([0]), 2))
    editor.edit(_site("q"), second, Step(None, None, True, torch.tensor([1]), 2))
    after = editor.edit(_site("q"), new[:1], Step(None, None, False, torch.tensor([0]), 2))
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_a_decode_without_its_prefill_is_one_line():
    editor = Editor(InterventionSpec(ablate="massive", stage="all"), LAYERS)
    with pytest.raises(QKAblateError, match="decode step came without its prefill"):
        editor.edit(_site("q"), _tensor(1, length=1), Step(None, None, False, torch.tensor([0]), 1))


@pytest.mark.parametrize(
    ("total", "world", "expected"),
    [
        (9, 3, [(0, 1, 2), (3, 4, 5), (6, 7, 8)]),
        (8, 2, [(0, 1, 2, 3), (4, 5, 6, 7)]),
        (2, 4, [(0,), (0,), (1,), (1,)]),  # fewer KV heads than ranks: each is replicated
        (1, 2, [(0,), (0,)]),
    ],
)
def test_local_heads_follow_vllms_split(total, world, expected):
    assert [local_heads(total, world, rank) for rank in range(world)] == expected


def test_heads_that_cannot_be_split_are_one_line():
    with pytest.raises(QKAblateError, match="cannot be split over tensor_parallel_size=2"):
        local_heads(9, 2, 0)


@pytest.mark.parametrize(("heads", "kv_heads", "world"), [(8, 4, 2), (8, 2, 4), (9, 3, 3)])
@pytest.mark.parametrize(
    "args", [{"ablate": "nonmassive"}, {"ablate": "massive"}, {"quant": "int4", "protect": "massive"}]
)
def test_each_rank_edits_its_heads_as_the_whole_model_would(heads, kv_heads, world, args):
    """Selection is per head; the random control is drawn for all heads and sliced per rank."""
    spec = InterventionSpec.from_args(args)
    tensors = {"q": _tensor(2, heads, seed=4), "k": _tensor(2, kv_heads, seed=5)}
    whole = Editor(spec, LAYERS)
    expected = {name: whole.edit(_site(name), x, PREFILL) for name, x in tensors.items()}
    for rank in range(world):
        q_local, kv_local = local_heads(heads, world, rank), local_heads(kv_heads, world, rank)
        shard = {"q": (heads, q_local), "k": (kv_heads, kv_local), "v": (kv_heads, kv_local)}
        editor = Editor(spec, LAYERS, shard=shard)
        for name, local in (("q", q_local), ("k", kv_local)):
            got = editor.edit(_site(name), tensors[name][:, list(local)], PREFILL)
            if expected[name] is None:  # a tensor this spec leaves alone
                assert got is None
            else:
                torch.testing.assert_close(got, expected[name][:, list(local)], rtol=0, atol=0)
