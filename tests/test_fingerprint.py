"""The fingerprint: identical models give overlap 1 and distance 0; a known pair zeroed by an
intervention, or planted in a copy, is found in exactly the layers it was done in; the statistics
observer sees a tensor after the edit only when asked; the command's files and one-line errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers
from conftest import _COMMON, MASSIVE_DIMS, attention_modules, plant_massive, projection_columns, prompts, rotary_pair

from qk_ablate.cli import main
from qk_ablate.core.spec import InterventionSpec
from qk_ablate.errors import QKAblateError
from qk_ablate.probes.fingerprint import compare, fingerprint, measure, save_fingerprint, summary_text
from qk_ablate.probes.massive_stats import collect_massive_stats

PAIR = MASSIVE_DIMS[0]  # dims 1 and 17 of a 32-dim rotate-half head are rotary pair 1
LAYERS = 4


def _llama(plant: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{**_COMMON, "num_hidden_layers": LAYERS})
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    if plant:
        plant_massive(model)  # pair 1 of every Q/K head, in every layer
    return model


def _batches() -> list[dict[str, torch.Tensor]]:
    return [{"input_ids": prompts(2, 32, seed=s)} for s in range(2)]


def _layers_where(result: dict, key: str, tensor: str) -> set[int]:
    return {row["layer"] for row in result["layers"] if PAIR in row[tensor][key]}


def test_identical_models_have_overlap_one_and_distance_zero(tmp_path):
    result = fingerprint(_llama(), _llama(), _batches())  # two loads of one checkpoint, measured twice
    assert result["distance"] == 0.0
    for row in result["layers"]:
        for t in "qk":
            assert row[t]["overlap"] == 1.0 and row[t]["log_ratio"] == 0.0
            assert row[t]["massive"][0] > 0 and not row[t]["appeared_pairs"] and not row[t]["vanished_pairs"]
    assert result["layers_changed"] == [] and result["overlap"] == {"q": 1.0, "k": 1.0}
    written = save_fingerprint(result, tmp_path)
    assert [p.name for p in written] == ["fingerprint.json", "fingerprint.png"] and written[1].stat().st_size > 1000
    assert json.loads(written[0].read_text())["distance"] == 0.0
    assert len(summary_text(result).splitlines()) == 4 + 1 + LAYERS


def test_zeroing_the_massive_pair_in_chosen_layers_is_found_there_only():
    model = _llama()
    zero = InterventionSpec.from_args({"ablate": "massive", "fill": "zero", "layers": "1;3"})
    result = fingerprint(model, model, _batches(), cand_spec=zero, labels=("plain", "zeroed in layers 1 and 3"))
    for t in "qk":
        assert _layers_where(result, "vanished_pairs", t) == {1, 3}
        assert not _layers_where(result, "appeared_pairs", t)
        assert result["layers"][0][t]["overlap"] == 1.0  # before the first edit nothing differs
        for layer in (1, 3):
            row = result["layers"][layer][t]
            assert (
                row["overlap"] < 1.0 and row["vanished"] == row["massive"][0] and row["massive"][1] < row["massive"][0]
            )
    assert set(result["layers_changed"]) >= {1, 3} and result["distance"] > 0.1
    # The observer's default is unchanged: it sees the tensor before the edit, the pair still massive.
    before = collect_massive_stats(model, _batches(), where=("post",), spec=zero)
    assert before.massive_fraction(1, "k", "post")[:, list(MASSIVE_DIMS)].min() == 1.0
    after = collect_massive_stats(model, _batches(), where=("post",), spec=zero, after=True)
    assert after.massive_fraction(1, "k", "post")[:, list(MASSIVE_DIMS)].max() == 0.0
    assert after.mean_norms(1, "k", "post")[:, list(MASSIVE_DIMS)].abs().max() == 0.0


@torch.no_grad()
def test_a_pair_planted_in_chosen_layers_of_a_copy_appears_there_only():
    original = _llama(plant=False)
    planted = copy.deepcopy(original)
    for index, attn in enumerate(attention_modules(planted)):
        if index in (0, 2):
            for name in "qk":
                proj, columns = projection_columns(planted, attn, name)
                proj.weight[columns[:, list(rotary_pair(planted, name))].flatten()] *= 25.0
    result = fingerprint(original, planted, _batches())
    reverse = fingerprint(planted, original, _batches())
    for t in "qk":
        assert _layers_where(result, "appeared_pairs", t) == {0, 2}
        assert _layers_where(reverse, "vanished_pairs", t) == {0, 2}
        assert result["layers"][0][t]["peak_to_mean"][1] > 3 * result["layers"][0][t]["peak_to_mean"][0]
    assert result["distance"] == pytest.approx(reverse["distance"], rel=1e-6)  # symmetric up to the sign of ln


def test_models_of_different_shapes_are_refused():
    small = measure(_llama(), _batches(), "four layers")
    torch.manual_seed(0)
    other = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**_COMMON)).eval()
    with pytest.raises(QKAblateError, match="one shape"):
        compare(small, measure(other, _batches(), "two layers"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--candidate", "pretrained=smollm2-135m,quant=int9"], "quant='int9' is not valid"),
        (["--candidate", "pretrained=smollm2-135m,colour=red"], "'colour' is not known"),
        (["--candidate", "pretrained=smollm2-135m", "--lengths", "1x"], "unknown length '1x'"),
        (["--candidate", "pretrained=smollm2-135m", "--samples", "0"], "at least 1 sample"),
        (["--candidate", "pretrained=smollm2-135m", "--lam", "0"], "--lam must be a positive number"),
        (
            ["--baseline", "pretrained=/no/such/model", "--candidate", "pretrained=smollm2-135m"],
            "could not load model '/no/",
        ),
    ],
)
def test_bad_values_fail_with_one_line(capsys, extra, message):
    assert main(["fingerprint", "--baseline", "pretrained=smollm2-135m", *extra]) == 2  # a later --baseline wins
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("qk-ablate: error:") and message in err


def test_the_command_on_the_embedded_model(tmp_path, capsys):
    code = main(
        [
            "fingerprint",
            "--baseline",
            "pretrained=smollm2-135m",
            "--lengths",
            "256",
            "--samples",
            "1",
            "--source",
            "passkey",
            "--candidate",
            "pretrained=smollm2-135m,quant=int4,quant_targets=qk",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "loaded once" in captured.err
    result = json.loads((tmp_path / "fingerprint.json").read_text())
    assert len(result["layers"]) == 30 and result["distance"] > 0 and result["unit"] == "pair"
    assert result["prompts"] == {"source": "passkey", "lengths": [256], "samples_per_length": 1}
    assert (tmp_path / "fingerprint.png").stat().st_size > 1000
    lines = captured.out.splitlines()
    assert lines[0].startswith("fingerprint post-RoPE: pretrained=smollm2-135m  ->") and len(lines) <= 40
