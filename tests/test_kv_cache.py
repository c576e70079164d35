"""The real quantized KV cache (`kv_cache=`): transformers' QuantizedCache inside lm-eval generation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HEAD_DIM, KV_HEADS, build, prompts, word_tokenizer
from lm_eval.api.instance import Instance
from lm_eval.utils import simple_parse_args_string

from qk_ablate.core.quantize import fake_quantize
from qk_ablate.core.spec import InterventionSpec, split_model_args
from qk_ablate.engines.hf import kv_cache
from qk_ablate.errors import QKAblateError
from qk_ablate.stats.runs import describe

PROMPT, NEW = 24, 6


def parse(text: str) -> InterventionSpec:
    ours, _ = split_model_args(simple_parse_args_string(text))
    return InterventionSpec.from_args(ours)


# ------------------------------------------------------------------ spec
def test_keys_parse_record_and_name_the_run():
    spec = parse("pretrained=x,kv_cache=QUANTO:int4,kv_residual=32,kv_group=32")
    assert (spec.kv_cache, spec.kv_residual, spec.kv_group) == ("quanto:int4", 32, 32)
    assert not spec.is_noop and not spec.edits_attention  # not a baseline, yet nothing to hook inside attention
    recorded = spec.to_dict()
    assert {k: recorded[k] for k in ("kv_cache", "kv_residual", "kv_group")} == {
        "kv_cache": "quanto:int4",
        "kv_residual": 32,
        "kv_group": 32,
    }
    assert describe(recorded) == "kv_cache=quanto:int4,kv_residual=32,kv_group=32"
    assert describe(InterventionSpec(kv_cache="hqq:int2").to_dict()) == "kv_cache=hqq:int2"  # defaults left out


def test_defaults_leave_results_files_as_they_were():
    assert not {"kv_cache", "kv_residual", "kv_group"} & set(InterventionSpec().to_dict())
    assert not {"kv_residual", "kv_group"} & set(InterventionSpec(kv_cache="quanto:int4").to_dict())
    assert InterventionSpec().is_noop and describe(InterventionSpec().to_dict()) == "baseline"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "kv_cache=quanto:int3",
            "kv_cache='quanto:int3' is not valid; choose one of: none, quanto:int4, quanto:int2, hqq:int1",
        ),
        ("kv_cache=int4", "kv_cache='int4' is not valid"),
        ("kv_cache=quanto:int4,kv_residual=-1", "kv_residual=-1 must be 0 or more"),
        ("kv_cache=quanto:int4,kv_group=0", "kv_group=0 must be a positive group size"),
        ("kv_cache=quanto:int4,kv_group=1.5", "kv_group=1.5 is not valid; it must be an integer"),
        ("kv_residual=32", "kv_residual/kv_group only work with a quantized cache; add kv_cache=quanto:int4"),
        ("kv_cache=fp8,kv_group=32", "kv_cache=fp8 is per tensor, with no residual window or groups"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_fix(text, message):
    with pytest.raises(QKAblateError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        parse(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "args",
    [
        {"ablate": "massive"},
        {"ablate": "massive", "targets": "k"},
        {"ablate": "nonmassive"},
        {"quant": "int4", "quant_targets": "kv"},
        {"quant": "int4", "quant_targets": "v"},
        {"quant": "int4"},
        {"quant": "int8", "quant_targets": "qkv", "stage": "all"},
    ],
)
def test_post_rope_edits_of_k_or_v_are_refused(args):
    """QuantizedCache stores its copy of the prompt's K/V in update(), before attention edits them post-RoPE."""
    with pytest.raises(
        QKAblateError, match="quantizes the prompt's keys/values as they enter the cache, before a post-RoPE edit"
    ):
        InterventionSpec(kv_cache="quanto:int4", **args)


@pytest.mark.parametrize(
    "args",
    [
        {"ablate": "massive", "rope": "pre"},
        {"ablate": "massive", "targets": "q"},
        {"quant": "int4", "quant_targets": "q"},
        {"quant": "int4", "quant_targets": "kv", "rope": "pre"},
    ],
)
def test_pre_rope_and_query_only_edits_are_allowed(args):
    assert InterventionSpec(kv_cache="quanto:int4", **args).edits_attention


def test_a_preset_that_resolves_to_a_post_rope_key_edit_is_refused():
    spec = InterventionSpec(preset="jin2025", kv_cache="quanto:int4")  # resolved only once the model is known
    with pytest.raises(QKAblateError, match="before a post-RoPE edit of K"):
        spec.for_architecture("llama")


def test_generate_kwargs_are_transformers_names():
    assert kv_cache.generate_kwargs(InterventionSpec()) == {}
    assert kv_cache.generate_kwargs(InterventionSpec(kv_cache="quanto:int2", kv_residual=16, kv_group=32)) == {
        "cache_implementation": "quantized",
        "cache_config": {"backend": "quanto", "nbits": 2, "q_group_size": 32, "residual_length": 16},
    }
    assert kv_cache.cache_config(InterventionSpec(kv_cache="hqq:int3"))["nbits"] == 3
    assert kv_cache.cache_config(InterventionSpec(kv_cache="fp8")) == {"backend": "fp8"}


# ------------------------------------------------------------------ what quanto does to a K/V tensor
@pytest.mark.parametrize("bits, group, dim", [(4, 64, 64), (2, 64, 64), (4, 32, 64), (2, 64, 128)])
def test_quanto_groups_are_our_token_axis_asymmetric(bits, group, dim):
    """quanto's axis 0 groups `group` consecutive values of [B, H, S, D]: a token's head dims, min/max with an offset.

    That is `quant_axis=token, group=<group>, sym=false`, not the per-channel grouping its docstring names.
    """
    from transformers.cache_utils import QuantoQuantizedLayer

    torch.manual_seed(0)
    keys = torch.randn(2, 3, 50, dim) * torch.linspace(0.1, 5.0, dim)
    keys[..., 3] *= 30  # one massive channel
    layer = QuantoQuantizedLayer(nbits=bits, q_group_size=group)
    assert torch.equal(layer.update(keys, keys.clone())[0], keys)  # the prefill gets its states unquantized
    seen, _ = layer.update(torch.randn(2, 3, 1, dim), torch.randn(2, 3, 1, dim))
    ours = fake_quantize(keys, f"int{bits}", "token", group=group, sym=False)
    torch.testing.assert_close(seen[:, :, :50], ours, rtol=0, atol=1e-5)
    channel = fake_quantize(keys, f"int{bits}", "channel", sym=True)
    assert (channel - seen[:, :, :50]).abs().max() > 0.1  # the per-channel simulation is another quantizer


# ------------------------------------------------------------------ generation on a tiny llama
def _lm(**args):
    from qk_ablate.engines.hf.lm import QKAblatedLM

    return QKAblatedLM(pretrained=build("llama"), tokenizer=word_tokenizer(), device="cpu", batch_size=2, **args)


def _generate(lm) -> tuple[torch.Tensor, list[torch.Tensor], list]:
    """Greedy tokens, each step's logits, and the cache object every forward received."""
    caches: list = []

    def record(module, args, kwargs):
        caches.append(next((v for v in kwargs.values() if hasattr(v, "get_seq_length")), None))

    handle = lm.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        ids = prompts(2, PROMPT)
        out = lm._model_generate(
            ids,
            PROMPT + NEW,
            stop=[],
            attention_mask=torch.ones_like(ids),
            output_logits=True,
            return_dict_in_generate=True,
        )
    finally:
        handle.remove()
    return out.sequences[:, PROMPT:], list(out.logits), caches


@pytest.fixture(scope="module")
def plain():
    return _generate(_lm())


def test_generation_runs_through_a_quantized_cache(plain):
    from transformers.cache_utils import QuantizedCache, QuantoQuantizedLayer

    _, logits, caches = _generate(_lm(kv_cache="quanto:int4", kv_group=32, kv_residual=16))
    assert len(caches) == NEW and all(c is caches[0] for c in caches)
    cache = caches[0]
    assert isinstance(cache, QuantizedCache) and all(isinstance(layer, QuantoQuantizedLayer) for layer in cache.layers)
    assert {(layer.nbits, layer.q_group_size, layer.residual_length) for layer in cache.layers} == {(4, 32, 16)}
    assert all(type(c).__name__ == "DynamicCache" for c in plain[2])


def test_prefill_is_the_plain_models_and_decode_steps_see_the_quantized_prompt(plain):
    tokens, logits, _ = _generate(_lm(kv_cache="quanto:int4", kv_group=32))
    assert torch.equal(logits[0], plain[1][0])  # the first token comes from the unquantized prefill
    assert torch.equal(tokens[:, 0], plain[0][:, 0])
    for step in range(1, NEW):
        assert not torch.allclose(logits[step], plain[1][step], atol=1e-3), step


def test_the_residual_window_keeps_recent_tokens_in_full_precision_until_it_fills():
    """With kv_residual=2 the window fills at the 2nd decode step (still returned unquantized), so the 3rd decode
    step is the first whose view differs from a window that never fills."""
    _, wide, _ = _generate(_lm(kv_cache="quanto:int2", kv_group=32))
    _, narrow, _ = _generate(_lm(kv_cache="quanto:int2", kv_group=32, kv_residual=2))
    for step in range(3):
        assert torch.equal(narrow[step], wide[step]), step
    assert not torch.allclose(narrow[3], wide[3], atol=1e-4)


def test_a_pre_rope_edit_really_runs_under_the_real_cache():
    """The edit reaches the prefill (its logits are the edited model's, not the plain one's) and the cache stores it."""
    edited_plain_cache = _generate(_lm(ablate="massive", rope="pre"))
    lm = _lm(ablate="massive", rope="pre", kv_cache="quanto:int4", kv_group=32)
    tokens, logits, caches = _generate(lm)
    assert torch.equal(logits[0], edited_plain_cache[1][0])
    assert not torch.allclose(logits[1], edited_plain_cache[1][1], atol=1e-4)
    assert type(caches[0]).__name__ == "QuantizedCache"
    assert lm.attachment.tally().summary()["k"]["dims_per_head"] > 0


def test_the_cache_is_recorded_in_the_results_config():
    info = _lm(kv_cache="quanto:int2", kv_residual=32).get_model_info()["qk_ablate"]
    assert (info["kv_cache"], info["kv_residual"]) == ("quanto:int2", 32) and "kv_group" not in info


def test_use_swaps_the_cache_without_reloading(plain):
    lm = _lm()
    lm.use(InterventionSpec(kv_cache="quanto:int4", kv_group=32))
    _, logits, caches = _generate(lm)
    assert type(caches[0]).__name__ == "QuantizedCache" and not torch.equal(logits[1], plain[1][1])
    lm.use(InterventionSpec())
    tokens, logits, _ = _generate(lm)
    assert torch.equal(logits[-1], plain[1][-1])


# ------------------------------------------------------------------ refusals at model load
@pytest.mark.parametrize("cache, package", [("quanto:int4", "optimum-quanto"), ("hqq:int4", "hqq")])
def test_a_missing_backend_is_refused_in_one_line_naming_the_package(monkeypatch, cache, package):
    monkeypatch.setattr(kv_cache, "backend_available", lambda module: False)
    with pytest.raises(
        QKAblateError, match=f"kv_cache={cache} needs the {package} package: pip install {package}$"
    ) as info:
        _lm(kv_cache=cache)
    assert "\n" not in str(info.value)
    lm = _lm()
    with pytest.raises(QKAblateError, match=f"pip install {package}"):
        lm.use(InterventionSpec(kv_cache=cache))


def test_backend_availability_is_an_import_check():
    assert kv_cache.backend_available("optimum.quanto")  # installed with the `quantized` extra
    assert not kv_cache.backend_available("no_such_package.quanto")


def test_a_group_that_does_not_divide_a_tokens_heads_is_refused():
    with pytest.raises(QKAblateError, match=f"kv_group=48 does not divide the {KV_HEADS} KV heads x {HEAD_DIM} dims"):
        _lm(kv_cache="quanto:int4", kv_group=48)


def test_transformers_own_refusals_become_one_line():
    """QuantizedCache takes full-attention models only: Gemma-2's sliding layers are refused at load, not mid-run."""
    from qk_ablate.engines.hf.lm import QKAblatedLM

    with pytest.raises(
        QKAblateError, match="kv_cache=quanto:int4 cannot run on this model: `QuantizedCache` is only supported"
    ):
        QKAblatedLM(
            pretrained=build("gemma2"), tokenizer=word_tokenizer(), device="cpu", kv_cache="quanto:int4", kv_group=32
        )


@pytest.mark.skipif(not kv_cache.backend_available("hqq"), reason="hqq is not installed (pip install hqq)")
def test_hqq_backend_runs(plain):
    tokens, logits, caches = _generate(_lm(kv_cache="hqq:int2", kv_group=32))
    assert type(caches[0].layers[0]).__name__ == "HQQQuantizedLayer"
    assert torch.equal(logits[0], plain[1][0]) and not torch.allclose(logits[1], plain[1][1], atol=1e-4)


def test_fp8_cache_runs(plain):
    tokens, logits, caches = _generate(_lm(kv_cache="fp8"))
    assert type(caches[0].layers[0]).__name__ == "Fp8QuantizedLayer"
    assert torch.equal(logits[0], plain[1][0]) and not torch.equal(logits[1], plain[1][1])


# ------------------------------------------------------------------ loglikelihood
def test_loglikelihood_is_unchanged_and_warns_once(capsys):
    requests = [(" ".join(f"w{i}" for i in range(10, 30)), " w40 w41"), ("w5 w6 w7", " w8")]
    instances = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)]
    expected = _lm().loglikelihood(instances)
    capsys.readouterr()
    lm = _lm(kv_cache="quanto:int4", kv_group=32)
    assert lm.loglikelihood(instances) == expected
    lm.loglikelihood(instances)
    err = capsys.readouterr().err
    assert err.count("kv_cache=quanto:int4 acts in generation only; loglikelihood requests are scored") == 1


# ------------------------------------------------------------------ the stock lm_eval command on the embedded model
@pytest.mark.slow
def test_stock_lm_eval_runs_passkey_through_the_real_cache(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        str(Path(sys.executable).with_name("lm_eval")),
        "--model",
        "qk_ablated",
        "--model_args",
        "pretrained=smollm2-135m,kv_cache=quanto:int4",
        "--tasks",
        "passkey_1k",
        "--limit",
        "2",
        "--device",
        "cpu",
        "--log_samples",
        "--output_path",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "acts in generation only" not in done.stderr  # passkey generates: no loglikelihood request
    (results,) = (tmp_path / "out").rglob("results_*.json")
    data = json.loads(results.read_text())
    assert data["config"]["qk_ablate"]["kv_cache"] == "quanto:int4"
    assert "passkey_1k" in data["results"]
    (samples,) = (tmp_path / "out").rglob("samples_passkey_1k_*.jsonl")
    assert len(samples.read_text().splitlines()) == 2
