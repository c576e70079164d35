"""A bad checkpoint folder is one line: what is wrong with it and how to fix it, never a traceback.

CI jobs hand `pretrained=` a folder that a previous step made or checked out; when that step went
wrong (no folder, no weights, a Git LFS pointer, a cut-short copy, a missing quantization package)
the log must say so in one line. Tiny folders made here, no Hub.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build, word_tokenizer
from torch import nn

from qk_ablate.engines.hf.lm import QKAblatedLM
from qk_ablate.errors import QKAblateError
from qk_ablate.models.loading import checkpoint_problem, load_error, load_model

LM_EVAL = str(Path(sys.executable).with_name("lm_eval"))


def _folder(path: Path) -> Path:
    """A tiny Llama with its tokenizer, as save_pretrained writes it."""
    build("llama", plant=False).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


def _compressed_folder(path: Path) -> Path:
    """A real compressed-tensors W4A16 checkpoint (pack-quantized int4, groups of 32), made with compressed_tensors' own API."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )
    from compressed_tensors.quantization.utils import calculate_qparams

    model = build("llama", plant=False)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32)
    apply_quantization_config(
        model,
        QuantizationConfig(
            config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args)},
            ignore=["lm_head"],
            format="pack-quantized",
        ),
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and hasattr(module, "weight_scale"):
                groups = module.weight.reshape(module.out_features, -1, args.group_size)
                scale, zero = calculate_qparams(groups.amin(-1), groups.amax(-1), args)
                module.weight_scale.copy_(scale.reshape(module.weight_scale.shape))
                module.weight_zero_point.copy_(zero.reshape(module.weight_zero_point.shape))
                module.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    model.save_pretrained(path)
    compressor.update_config(str(path))
    word_tokenizer().save_pretrained(path)
    return path


def _load_message(folder: Path | str) -> str:
    with pytest.raises(QKAblateError) as info:
        QKAblatedLM(pretrained=str(folder), device="cpu")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"could not load model '{folder}': ")
    return message


def test_a_missing_folder(tmp_path):
    message = _load_message(tmp_path / "no_such_checkpoint")
    assert f"there is no folder '{tmp_path / 'no_such_checkpoint'}'" in message and "check the path" in message


def test_a_relative_name_that_is_neither_a_folder_nor_a_reachable_hub_id(tmp_path, monkeypatch):
    """`checkpoints/x` reads like a Hub id too: the line names both readings (the Hub's own error is faked, no network)."""
    monkeypatch.chdir(tmp_path)
    message = str(
        load_error("checkpoints/model-int4", OSError("We couldn't connect to 'https://huggingface.co'.\nmore"))
    )
    assert message == (
        f"could not load model 'checkpoints/model-int4': We couldn't connect to 'https://huggingface.co'; "
        f"there is no local folder of that name either (relative paths start from {tmp_path}); "
        "check the path or the Hub id"
    )


def test_a_config_without_weights(tmp_path):
    folder = _folder(tmp_path / "ckpt")
    (folder / "model.safetensors").unlink()
    assert "has a config.json but no weights (model.safetensors or pytorch_model.bin); copy them in" in _load_message(
        folder
    )


def test_a_folder_without_config(tmp_path):
    folder = _folder(tmp_path / "ckpt")
    (folder / "config.json").unlink()
    assert f"'{folder}' has no config.json; give the folder that save_pretrained wrote" in _load_message(folder)


@pytest.fixture
def compressed(tmp_path):
    return _compressed_folder(tmp_path / "w4a16")


def test_a_compressed_tensors_checkpoint_loads_with_the_package(compressed):
    """The control for the next test: the folder itself is sound."""
    lm = QKAblatedLM(pretrained=str(compressed), device="cpu")
    assert lm.model.config.quantization_config.quant_method == "compressed-tensors"


@pytest.fixture
def without_compressed_tensors(monkeypatch):
    """compressed-tensors as if not installed: its modules unimportable, transformers' cached check redone."""
    from transformers.utils import import_utils

    for name in {"compressed_tensors", *(n for n in sys.modules if n.startswith("compressed_tensors."))}:
        monkeypatch.setitem(sys.modules, name, None)
    import_utils.is_compressed_tensors_available.cache_clear()
    yield
    import_utils.is_compressed_tensors_available.cache_clear()


def test_a_compressed_tensors_checkpoint_without_the_package(compressed, without_compressed_tensors):
    message = _load_message(compressed)
    assert "it is a compressed-tensors checkpoint and the package that loads it is missing or too old" in message
    assert message.endswith("pip install 'qk-ablate[quantized]' (compressed-tensors)")


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda data: data[:5000], "is truncated: its tensors need"),
        (lambda data: data[:6], "is not a safetensors file (6 bytes)"),
        (lambda data: data[:8] + b"{not json" + data[17:], "is not a safetensors file (its header is not valid JSON)"),
        (
            lambda data: b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n",
            "is a Git LFS pointer, not the weights; fetch them with `git lfs pull`",
        ),
    ],
    ids=["truncated", "six-bytes", "bad-header", "lfs-pointer"],
)
def test_a_corrupt_weights_file(tmp_path, damage, says):
    folder = _folder(tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    message = _load_message(folder)
    assert f"'{weights}' {says}" in message
    assert message.endswith("copy or download it again") or "lfs: true" in message


def test_a_sound_folder_has_no_problem_and_other_errors_keep_their_traceback(tmp_path, monkeypatch):
    """Only load failures become one line: a bug elsewhere in HFLM's start-up is not dressed up as a bad folder."""
    from lm_eval.models.huggingface import HFLM

    folder = _folder(tmp_path / "ckpt")
    assert checkpoint_problem(str(folder)) is None

    def broken(self, **kwargs):
        raise RuntimeError("a bug, not a checkpoint problem")

    monkeypatch.setattr(HFLM, "__init__", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        QKAblatedLM(pretrained=str(folder), device="cpu")


def test_our_own_loader_says_the_same(tmp_path):
    """profile, fingerprint and benchmarks load through load_model: the same line there."""
    folder = _folder(tmp_path / "ckpt")
    (folder / "model.safetensors").write_bytes(b"\0" * 8)
    with pytest.raises(QKAblateError, match="is truncated: its tensors need 8 bytes|is not a safetensors file"):
        load_model(str(folder), device="cpu")


def test_the_lm_eval_cli_prints_one_line(tmp_path):
    folder = _folder(tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    done = subprocess.run(
        [
            LM_EVAL,
            "--model",
            "qk_ablated",
            "--model_args",
            f"pretrained={folder}",
            "--tasks",
            "passkey_1k",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"qk-ablate: error: could not load model '{folder}': '{weights}' is truncated")
