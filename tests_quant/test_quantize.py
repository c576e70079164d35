"""`qk-ablate quantize` on a tiny random Llama: every method writes a real quantized checkpoint.

Real means the weights on disk are packed int4 (I32) or int8 (I8) for every quantized Linear,
not a float copy with a config flag; the record beside them says how it was made; a rerun keeps
what is finished; bad arguments are one line. Calibration is cut small (4 samples of 32 tokens).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qk_ablate.cli import main
from qk_ablate.models.checkpoints import FOUR_BIT, INFO, METHODS, stored_formats

CALIBRATED = ("gptq", "awq", "smoothquant")


def quantize(tiny: Path, out: Path, method: str, calibration: Path, *extra: str) -> int:
    return main(
        [
            "quantize",
            "--model",
            str(tiny),
            "--method",
            method,
            "--out",
            str(out),
            "--samples",
            "4",
            "--seq-len",
            "32",
            "--calibration",
            str(calibration),
            *extra,
        ]
    )


def linear_weights(folder: Path) -> int:
    """Elements of the source's quantized Linear weights (every *_proj of the layers; lm_head stays float)."""
    with open(folder / "model.safetensors", "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return sum(
        entry["shape"][0] * entry["shape"][1]
        for name, entry in header.items()
        if name.startswith("model.layers.") and name.endswith("_proj.weight")
    )


@pytest.mark.parametrize("method", METHODS)
def test_each_method_stores_quantized_weights_and_its_record(tiny, calibration_text, tmp_path, method, capsys):
    assert quantize(tiny, tmp_path, method, calibration_text) == 0
    folder = tmp_path / f"tiny-{method}"
    assert f"wrote {folder}: " in capsys.readouterr().err
    formats = stored_formats(folder)
    elements = linear_weights(tiny)
    if method in FOUR_BIT:  # eight 4-bit values per int32
        assert formats["I32"] == elements // 2 and "I8" not in formats
    else:  # one int8 per weight
        assert formats["I8"] == elements and "I32" not in formats
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"

    record = json.loads((folder / INFO).read_text())
    assert record["method"] == method and record["description"] == METHODS[method] and record["model"] == str(tiny)
    assert record["group_size"] == (128 if method in FOUR_BIT else None)  # auto: the largest that divides 128 and 256
    assert record["awq_grid"] == (20 if method == "awq" else None)  # llm-compressor's default grid
    assert {"llmcompressor", "compressed-tensors", "transformers", "torch", "qk-ablate"} <= set(record["versions"])
    if method in CALIBRATED:
        calibration = record["calibration"]
        assert calibration["source"] == str(calibration_text)
        assert calibration["sha256"] == hashlib.sha256(calibration_text.read_bytes()).hexdigest()
        assert (calibration["samples"], calibration["seq_len"], calibration["seed"]) == (4, 32, 0)
    else:
        assert record["calibration"] is None
    assert not list(tmp_path.glob(".*partial*"))  # only the finished folder keeps a name


def test_the_same_seed_stores_the_same_tensors(tiny, calibration_text, tmp_path):
    """A checkpoint is redone from its record: GPTQ twice with seed 0 (its Hessian is a float sum in
    calibration order, so an unseeded shuffle inside llm-compressor changed the stored int4 values)."""
    first, second = tmp_path / "first", tmp_path / "second"
    assert quantize(tiny, first, "gptq", calibration_text) == 0
    assert quantize(tiny, second, "gptq", calibration_text) == 0
    a, b = load_file(first / "tiny-gptq" / "model.safetensors"), load_file(second / "tiny-gptq" / "model.safetensors")
    assert a.keys() == b.keys()
    assert [name for name in a if not torch.equal(a[name], b[name])] == []


def test_a_rerun_keeps_a_finished_folder(tiny, calibration_text, tmp_path, capsys):
    assert quantize(tiny, tmp_path, "rtn", calibration_text) == 0
    weights = tmp_path / "tiny-rtn" / "model.safetensors"
    written = weights.stat().st_mtime_ns
    capsys.readouterr()
    assert quantize(tiny, tmp_path, "rtn", calibration_text) == 0
    assert capsys.readouterr().err.startswith(f"kept {tmp_path / 'tiny-rtn'}: ")
    assert weights.stat().st_mtime_ns == written


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown method", "--method 'int3' is not one of rtn, gptq, awq, smoothquant, w8a8, all"),
        ("non-empty out", "tiny-rtn' exists and is not empty; remove it or choose another --out"),
        ("missing model", "is not a local model folder with a config.json (the quantizer runs offline)"),
        ("group 48", "--group 48 does not divide a layer's 128 input columns; use --group auto"),
        ("group abc", "--group 'abc' must be auto or a whole number of columns > 0, e.g. 128"),
        ("group 0", "--group '0' must be auto or a whole number of columns > 0, e.g. 128"),
    ],
)
def test_bad_arguments_are_one_line(tiny, calibration_text, tmp_path, capsys, case, message):
    model, method, extra = tiny, "rtn", []
    if case == "unknown method":
        method = "int3"
    elif case == "non-empty out":
        (tmp_path / "tiny-rtn").mkdir()
        (tmp_path / "tiny-rtn" / "notes.txt").write_text("someone else's file")
    elif case == "missing model":
        model = tmp_path / "tiny"
    else:
        extra = ["--group", case.split()[1]]
    assert quantize(model, tmp_path, method, calibration_text, *extra) == 2
    err = capsys.readouterr().err  # loading the model may print progress bars first
    last = err.strip().splitlines()[-1]
    assert last.startswith("qk-ablate: error: ") and message in last and "Traceback" not in err
    assert not (tmp_path / "tiny-rtn" / "config.json").exists()
