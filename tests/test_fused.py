"""The compiled (fused) per-tensor work agrees with the eager reference, on CPU through inductor."""

from __future__ import annotations

import pytest
import torch
from conftest import build

from qk_ablate import InterventionSpec, attach
from qk_ablate.core import fused
from qk_ablate.core.destroy import destroy_columns, fill_values
from qk_ablate.core.edits import edit_new_tokens, statistics
from qk_ablate.core.quantize import fake_quantize
from qk_ablate.core.selection import column_norms, massive_mask_threshold
from qk_ablate.errors import QKAblateError


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


def test_one_pass_statistics_and_new_token_edits_compiled_match_eager(compiled):
    x, valid = tensors(torch.bfloat16)
    norms, means = fused.run(statistics, x, valid, True)
    want_norms, want_means = statistics(x, valid, True)
    torch.testing.assert_close(norms, want_norms, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(means, want_means, rtol=1e-5, atol=1e-5)
    assert fused.run(statistics, x, valid, False)[1] is None
    native, _ = statistics(x, valid, False, True)  # the preset's norms: rounded to bf16 (so the editor runs them eager:
    assert native.dtype == torch.float32 and torch.equal(native, native.bfloat16().float())  # compiled, they are not)
    columns = massive_mask_threshold(norms, 5.0)
    fill = means.to(x.dtype)
    new = x[:, :, -1:]  # a decode step's token under stage=all: destroyed and quantized in one pass
    for args in (
        (columns, fill, "int4", "token", None, True, None),
        (columns, fill, "none", "token", None, True, None),
        (None, None, "int4", "channel", None, True, columns),
    ):
        assert torch.equal(fused.run(edit_new_tokens, new, *args), edit_new_tokens(new, *args))


@pytest.mark.parametrize("setting", ["0", "1"])
def test_edits_into_a_tensor_write_its_own_memory_and_agree_with_new_tensors(monkeypatch, setting):
    """transformers' query is a transposed [B, S, H, D] buffer: edited in place, it keeps that layout."""
    monkeypatch.setenv("QK_ABLATE_COMPILE", setting)
    x = torch.randn(2, 37, 3, 16).transpose(1, 2)
    valid = torch.ones(2, 37, dtype=torch.bool)
    valid[0, :5] = False
    columns = torch.zeros(2, 3, 16, dtype=torch.bool)
    columns[:, :, 4] = True
    fill = x.mean(dim=2, keepdim=True)
    for fn, args in (
        (destroy_columns, (columns, valid, fill)),
        (fake_quantize, ("int4", "token", None, True, valid, None)),
        (fake_quantize, ("int4", "channel", None, True, None, columns)),
    ):
        want = fused.run(fn, x, *args)
        target = x.clone().transpose(1, 2).contiguous().transpose(1, 2)  # the same layout as x
        pointer, stride = target.data_ptr(), target.stride()
        got = fused.run(fn, target, *args, into=True)
        assert got is target and got.data_ptr() == pointer and got.stride() == stride == x.stride()
        assert torch.equal(got, want)


def test_prompts_of_every_length_and_batch_share_one_compiled_kernel(compiled):
    """Batch and sequence are symbols, heads and head dim constants: a new prompt length or batch size
    compiles nothing new, a new head count does."""
    from torch._dynamo.utils import counters

    def graphs() -> int:
        return counters["stats"]["unique_graphs"]

    torch._dynamo.reset()
    fused._compiled.cache_clear()
    fused.run(statistics, torch.randn(2, 4, 10, 16), torch.ones(2, 10, dtype=torch.bool), True)
    first = graphs()
    for batch, length in ((2, 33), (3, 7), (5, 120)):
        fused.run(statistics, torch.randn(batch, 4, length, 16), torch.ones(batch, length, dtype=torch.bool), True)
    assert graphs() == first
    fused.run(statistics, torch.randn(2, 8, 10, 16), torch.ones(2, 10, dtype=torch.bool), True)
    assert graphs() == first + 1


@pytest.mark.parametrize(
    ("fmt", "axis", "group", "sym"),
    [
        ("int4", "token", None, True),
        ("int4", "channel", None, True),
        ("int2", "channel", 8, False),
        ("fp8", "tensor", None, True),
    ],
)
def test_quantizers_compiled_match_eager(compiled, fmt, axis, group, sym):
    x, valid = tensors(torch.float32)
    protect = column_norms(x, valid) > 30  # the massive columns, kept in full precision
    got = fused.run(fake_quantize, x, fmt, axis, group, sym, valid, protect)
    want = fake_quantize(x, fmt, axis, group, sym, valid, protect)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(got[protect[:, :, None, :].expand_as(x)], x[protect[:, :, None, :].expand_as(x)])


@pytest.mark.parametrize(
    ("args", "generate"),
    [
        (
            {"ablate": "massive", "quant": "int4", "quant_targets": "k", "protect": "massive", "quant_axis": "channel"},
            False,
        ),
        (
            {"ablate": "massive", "quant": "int4", "quant_targets": "k", "stage": "all", "select": "topk", "topk": 2},
            True,
        ),
    ],
    ids=["prefill-logits", "stage-all-generation"],
)
def test_a_model_gives_the_same_logits_compiled_and_eager(monkeypatch, args, generate):
    """A whole model, prefill; and `stage=all` generation, whose decode steps edit each new token in one fused pass."""
    model = build("llama")
    ids = torch.randint(1, 100, (2, 24))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    outputs = {}
    for setting in ("0", "1"):
        monkeypatch.setenv("QK_ABLATE_COMPILE", setting)
        with attach(model, InterventionSpec.from_args(args)), torch.no_grad():
            if generate:
                out = model.generate(
                    ids,
                    attention_mask=mask,
                    max_new_tokens=5,
                    do_sample=False,
                    output_logits=True,
                    return_dict_in_generate=True,
                )
                outputs[setting] = torch.stack(out.logits)
            else:
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
