"""The compiled (fused) per-tensor work agrees with the eager reference, on CPU through inductor."""

from __future__ import annotations

import pytest
import torch
from conftest import build

from qk_ablate import InterventionSpec, attach, fused
from qk_ablate.destroy import destroy_columns, fill_values
from qk_ablate.errors import QKAblateError
from qk_ablate.quantize import fake_quantize
from qk_ablate.selection import column_norms, massive_mask_threshold


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.setenv("QK_ABLATE_COMPILE", "1")


def tensors(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A [2, 3, 37, 16] tensor with two massive columns per head and left padding in sample 1."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 37, 16)
    x[..., 3] *= 40
    x[:, 1, :, 9] += 25
    valid = torch.ones(2, 37, dtype=torch.bool)
    valid[1, :6] = False
    return x.to(dtype), valid


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selection_fill_and_destroy_compiled_match_eager(compiled, dtype):
    x, valid = tensors(dtype)
    norms = fused.run(column_norms, x, valid)
    torch.testing.assert_close(norms, column_norms(x, valid), rtol=1e-5, atol=1e-5)
    columns = massive_mask_threshold(norms, 5.0)
    assert torch.equal(columns, massive_mask_threshold(column_norms(x, valid), 5.0)) and columns.any()
    for mode in ("mean", "shared_mean", "tensor_mean"):
        fill = fused.run(fill_values, x, valid, mode, columns)
        torch.testing.assert_close(fill, fill_values(x, valid, mode, columns), rtol=1e-5, atol=1e-5)
    fill = fill_values(x, valid, "mean", columns)
    assert torch.equal(fused.run(destroy_columns, x, columns, valid, fill), destroy_columns(x, columns, valid, fill))


@pytest.mark.parametrize(("fmt", "axis", "group", "sym"), [("int4", "token", None, True), ("int4", "channel", None, True),
                                                           ("int2", "channel", 8, False), ("fp8", "tensor", None, True)])
def test_quantizers_compiled_match_eager(compiled, fmt, axis, group, sym):
    x, valid = tensors(torch.float32)
    protect = column_norms(x, valid) > 30  # the massive columns, kept in full precision
    got = fused.run(fake_quantize, x, fmt, axis, group, sym, valid, protect)
    want = fake_quantize(x, fmt, axis, group, sym, valid, protect)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(got[protect[:, :, None, :].expand_as(x)], x[protect[:, :, None, :].expand_as(x)])


def test_a_model_gives_the_same_logits_compiled_and_eager(monkeypatch):
    model = build("llama")
    ids = torch.randint(1, 100, (2, 24))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    spec = InterventionSpec.from_args({"ablate": "massive", "quant": "int4", "quant_targets": "k", "protect": "massive",
                                       "quant_axis": "channel"})
    outputs = {}
    for setting in ("0", "1"):
        monkeypatch.setenv("QK_ABLATE_COMPILE", setting)
        with attach(model, spec), torch.no_grad():
            outputs[setting] = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(outputs["1"], outputs["0"], rtol=1e-5, atol=1e-5)


def test_auto_compiles_on_cuda_only_and_a_bad_setting_is_one_line(monkeypatch):
    monkeypatch.delenv("QK_ABLATE_COMPILE", raising=False)
    assert fused.compiles(torch.device("cuda", 0)) and not fused.compiles(torch.device("cpu"))
    monkeypatch.setenv("QK_ABLATE_COMPILE", "0")
    assert not fused.compiles(torch.device("cuda", 0))
    monkeypatch.setenv("QK_ABLATE_COMPILE", "yes")
    with pytest.raises(QKAblateError, match="QK_ABLATE_COMPILE='yes' is not valid; choose auto, 1 or 0"):
        fused.compiles(torch.device("cpu"))
