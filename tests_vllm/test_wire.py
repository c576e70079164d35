"""What the driver and vLLM's workers exchange survives vLLM's own msgpack encoding (no pickle):
the spec, the registered prompts, the selection tallies and the edit counts."""

from __future__ import annotations

from typing import Any

import pytest

from qk_ablate.core.record import SelectionTally
from qk_ablate.core.spec import InterventionSpec
from qk_ablate.engines.vllm.wire import EditCounts, prompts_from_wire, prompts_to_wire


@pytest.fixture(autouse=True)
def _no_pickle(monkeypatch):
    """vLLM falls back to pickle only when this is set; without it, anything not plain data fails."""
    monkeypatch.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION", raising=False)


def _through_vllm(data: Any) -> Any:
    """`data` as a worker receives it (or the driver a worker's answer): vLLM's msgpack, both ways."""
    from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

    return MsgpackDecoder().decode(MsgpackEncoder().encode(data))


def test_registered_prompts_travel_as_token_lists_with_their_lengths():
    lengths = {(1, 2, 3, 4): 3, (5, 6): 2, (7,): 1}
    wire = prompts_to_wire(lengths)
    assert wire == [[[1, 2, 3, 4], 3], [[5, 6], 2], [[7], 1]]  # no tuple anywhere, keys or values
    assert prompts_from_wire(_through_vllm(wire)) == lengths
    assert prompts_from_wire(_through_vllm(prompts_to_wire({}))) == {}


def test_a_function_is_refused_without_the_insecure_setting():
    """What `LLM.apply_model` used to send: it needs pickle, which vLLM allows only with that setting."""
    with pytest.raises(TypeError, match="not serializable"):
        _through_vllm(prompts_to_wire)


def test_the_spec_travels_whole():
    spec = InterventionSpec.from_args({"preset": "jin2025", "topk": 2, "stage": "all", "layers": "0-3"})
    assert InterventionSpec.from_wire(_through_vllm(spec.to_wire())) == spec


def test_selection_tallies_travel_and_sum_over_workers():
    ranks = [SelectionTally({"q": 3, "k": 1}, {"q": 30, "k": 10}), SelectionTally({"q": 2}, {"q": 30, "k": 10})]
    back = [SelectionTally.from_wire(_through_vllm(t.to_wire())) for t in ranks]
    assert back == ranks
    assert sum(back, SelectionTally()) == SelectionTally({"k": 1, "q": 5}, {"k": 20, "q": 60})


def test_edit_counts_travel_and_sum_over_workers():
    one, two = EditCounts(prefills=2), EditCounts(prefills=2, recomputed=1)
    for counts in (one, two):
        counts.add("prefill", 0, "q", 11)
        counts.add("prefill", 29, "k", 11)
    two.add("decode", 29, "k", 4)
    back = [EditCounts.from_wire(_through_vllm(c.to_wire())) for c in (one, two)]
    assert back == [one, two]
    total = sum(back, EditCounts())
    assert (total.prefills, total.recomputed) == (4, 1)
    assert (total.of("prefill", 0, "q"), total.of("prefill", 29, "k"), total.of("decode", 29, "k")) == (22, 22, 4)
    assert total.of("decode", 0, "v") == 0
