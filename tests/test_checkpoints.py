"""Real quantized checkpoints: the calibration sample, the stored formats, loading in the main
environment, `baseline_model` sweeps, and the one-line refusals of `qk-ablate quantize` here.

The checkpoint itself (tests/data/tiny-llama-gptq) is made by llm-compressor in .venv-quant
(tests/data/make_quantized_fixture.py); tests_quant/ tests the quantize command end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from qk_ablate.errors import QKAblateError
from qk_ablate.models.checkpoints import Calibration, calibration_dataset, describe_folder, pick_group, stored_formats

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "tiny-llama-gptq"


def test_packaged_calibration_is_the_gsm8k_test_split_in_a_seeded_order():
    first, again, other = (Calibration("gsm8k", seed=s).texts() for s in (0, 0, 1))
    assert len(first) == 1319 and first == again and first != other
    assert sorted(first) == sorted(other)  # the same documents, another order
    assert "####" in first[0]  # question, then the worked answer


def test_calibration_windows_are_exact_and_reproducible(tmp_path):
    from conftest import word_tokenizer

    text = tmp_path / "words.txt"
    text.write_text(
        "\n\n".join(" ".join(f"w{(i * 7 + j) % 120}" for j in range(40)) for i in range(20)), encoding="utf-8"
    )
    calibration = Calibration(str(text), samples=6, seq_len=50, seed=3)
    one, two = (calibration_dataset(calibration, word_tokenizer()) for _ in range(2))
    assert len(one) == 6 and all(len(ids) == 50 for ids in one["input_ids"])
    assert one["input_ids"] == two["input_ids"]
    with pytest.raises(QKAblateError, match="has .* tokens; 100 samples of 50 need 5000"):
        calibration_dataset(Calibration(str(text), samples=100, seq_len=50), word_tokenizer())


def test_calibration_file_errors_are_one_line(tmp_path):
    with pytest.raises(QKAblateError, match="neither 'gsm8k' nor a file"):
        Calibration(str(tmp_path / "missing.jsonl")).texts()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "no text here"}\n', encoding="utf-8")
    with pytest.raises(QKAblateError, match="line 1: give a 'text' field"):
        Calibration(str(bad)).texts()


def test_group_size_auto_divides_every_layer_and_a_wrong_one_is_refused():
    from conftest import build

    model = build("llama")  # inputs of 128 columns everywhere
    assert pick_group(model, "auto") == 128
    assert pick_group(model, 64) == 64
    with pytest.raises(QKAblateError, match="--group 96 does not divide a layer's 128 input columns"):
        pick_group(model, 96)


def test_stored_formats_read_the_safetensors_headers(tmp_path):
    save_file(
        {"packed": torch.zeros(4, 8, dtype=torch.int32), "scale": torch.ones(4, 2)}, tmp_path / "model.safetensors"
    )
    assert stored_formats(tmp_path) == {"I32": 128, "F32": 32}
    assert "(I32 80%, F32 20% of tensor bytes)" in describe_folder(tmp_path)
    with pytest.raises(QKAblateError, match="holds no .safetensors file"):
        stored_formats(tmp_path / "nothing")


def test_the_committed_checkpoint_really_stores_4_bit_weights():
    """Packed int32 words and a scale per group of 128 columns, not a float copy with a config flag."""
    from safetensors import safe_open

    record = json.loads((FIXTURE / "qk_ablate_quantize.json").read_text())
    assert record["method"] == "gptq" and record["group_size"] == 128
    with safe_open(FIXTURE / "model.safetensors", "pt") as handle:
        names = set(handle.keys())
        packed = handle.get_tensor("model.layers.0.self_attn.q_proj.weight_packed")
        scale = handle.get_tensor("model.layers.0.self_attn.q_proj.weight_scale")
    assert "model.layers.0.self_attn.q_proj.weight" not in names
    assert packed.dtype == torch.int32 and packed.shape == (128, 128 // 8)  # eight 4-bit values per int32
    assert scale.shape == (128, 1)
    assert stored_formats(FIXTURE)["I32"] > 0


def test_the_main_environment_loads_it_through_qk_ablated_on_the_int4_grid():
    """transformers 5.24 + compressed-tensors read llm-compressor's output; its weights lie on the
    symmetric int4 grid of their group scales; a no-op attachment leaves its logits bit-identical."""
    from qk_ablate.engines.hf.lm import QKAblatedLM

    plain = QKAblatedLM(pretrained=str(FIXTURE), device="cpu", dtype="float32", batch_size=1)
    ids = torch.tensor([[1, 5, 9, 14, 3, 7, 22, 40]])
    with torch.no_grad():
        before = plain.model(ids).logits
    projection = plain.model.model.layers[0].self_attn.q_proj
    levels = projection.weight / projection.weight_scale  # one scale per row and group of 128 columns
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.abs().max() <= 8
    ablated = QKAblatedLM(pretrained=str(FIXTURE), device="cpu", dtype="float32", batch_size=1, ablate="massive")
    with torch.no_grad():
        after = ablated.model(ids).logits
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    ablated.attachment.remove()
    with torch.no_grad():
        assert torch.equal(ablated.model(ids).logits, before)


def test_quantize_here_says_where_llm_compressor_lives(tmp_path, capsys):
    """The main environment has no llm-compressor (it pins transformers<=5.17): one line, the fix."""
    import importlib.util

    from qk_ablate.cli import main

    assert importlib.util.find_spec("llmcompressor") is None, "this test pins the refusal of an environment without it"

    assert main(["quantize", "--method", "rtn", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bash scripts/setup.sh --quant" in err
    assert main(["quantize", "--method", "int3"]) == 2
    assert "--method 'int3' is not one of rtn, gptq, awq, smoothquant, w8a8, all" in capsys.readouterr().err


def test_baseline_model_compares_every_model_with_the_base(tmp_path, tmp_path_factory):
    """A sweep of a base and a 'checkpoint' (here another tiny model) reports the checkpoint's
    baseline cell as a change against the base model's."""
    import yaml
    from conftest import build, tiny_folder, word_tokenizer

    from qk_ablate.cli import main

    base = tiny_folder(tmp_path_factory, "base")
    other = tmp_path / "other"
    build("llama", seed=1).save_pretrained(other)
    word_tokenizer().save_pretrained(other)
    body = {
        "name": "q",
        "output": str(tmp_path / "runs"),
        "baseline_model": str(base),
        "models": [{"pretrained": str(base)}, {"pretrained": str(other)}],
        "interventions": {"baseline": {}},
        "tasks": ["city_facts"],
        "limit": 4,
        "batch_size": 2,
        "device": "cpu",
    }
    config = tmp_path / "q.yaml"
    config.write_text(yaml.safe_dump(body))
    assert main(["sweep", str(config), "--iterations", "200"]) == 0
    rows = [line for line in (tmp_path / "runs" / "report.md").read_text().splitlines() if line.startswith("| ")]
    other_row = next(line for line in rows if line.startswith(f"| {other} |"))
    # its city_facts cell carries a paired interval against the base (the kind mean is left out: a random
    # tiny model's base answers nothing right, so its city_facts carries no signal)
    assert "[" in other_row.split("|")[3] and "n/a" in other_row.split("|")[-4]
    body["baseline_model"] = "nobody"
    config.write_text(yaml.safe_dump(body))
    with pytest.raises(QKAblateError, match="baseline_model 'nobody' is not the pretrained of any of its models"):
        from qk_ablate.sweep import load_config

        load_config(config)


def test_w8a8_checkpoints_quantize_activations_while_they_are_evaluated():
    """SmoothQuant's W8A8 is only W8A8 if the inputs of each Linear are quantized at run time too:
    int8 per token, symmetric, scale = max|x| / 127.5 (compressed-tensors' dynamic token scheme)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(DATA / "tiny-llama-w8a8", dtype=torch.float32)
    assert stored_formats(DATA / "tiny-llama-w8a8")["I8"] > 0
    model(torch.tensor([[1, 5, 9]]))  # the first forward decompresses the weights
    projection = model.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 8, projection.in_features, generator=torch.Generator().manual_seed(0)) * 3
    scale = x.abs().amax(-1, keepdim=True) / 127.5
    quantized_input = (x / scale).round().clamp(-128, 127) * scale
    with torch.no_grad():
        out = projection(x)
        assert torch.allclose(out, torch.nn.functional.linear(quantized_input, projection.weight), atol=1e-5)
        assert not torch.allclose(out, torch.nn.functional.linear(x, projection.weight), atol=1e-3)
