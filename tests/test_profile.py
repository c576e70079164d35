"""Profile: RoPE pair/frequency/band per dim from the model's own inv_freq (plain, llama3-scaled,
partial rotary), summaries of planted massive dims, and the written files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import transformers
from conftest import MASSIVE_DIMS, build, prompts

from qk_ablate.engines.hf.rope import inv_freq_of, model_rope_dims, rope_dims
from qk_ablate.errors import QKAblateError
from qk_ablate.probes.figures import save_heatmaps
from qk_ablate.probes.profile import profile_model, save_profile, summarize

SMALL = dict(
    hidden_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
    intermediate_size=256,
    vocab_size=256,
    max_position_embeddings=2048,
)


def _model(config) -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def test_plain_rope_frequencies_match_theta():
    model = _model(transformers.LlamaConfig(**SMALL, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    dims = model_rope_dims(model, 32)
    for d in range(32):
        pair = d % 16
        assert dims.pair[d] == pair
        assert dims.frequency[d] == pytest.approx(10000.0 ** (-2 * pair / 32), rel=1e-5)
        assert dims.wavelength[d] == pytest.approx(2 * math.pi / dims.frequency[d])
    assert dims.band[0] == "high" and dims.band[15] == "low"  # 2*pi vs 2*pi*10000^(30/32) > 2048 tokens


def test_llama3_scaled_rope_is_read_from_the_model():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 1024,
    }
    config = transformers.LlamaConfig(**SMALL, rope_parameters=rope)
    model = _model(config)
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = torch.tensor([500000.0 ** (-2 * i / 32) for i in range(16)])
    assert not torch.allclose(expected, plain)  # the scaling changes the low frequencies
    dims = model_rope_dims(model, 32)
    assert [dims.frequency[p] for p in range(16)] == pytest.approx(expected.tolist(), rel=1e-5)
    assert dims.frequency[16 + 3] == dims.frequency[3]  # rotate_half: dim d and d + 16 share a pair


def test_partial_rotary_model_leaves_the_rest_unrotated():
    config = transformers.PhiConfig(
        hidden_size=128,
        num_attention_heads=4,
        num_hidden_layers=2,
        intermediate_size=256,
        vocab_size=256,
        partial_rotary_factor=0.5,
        max_position_embeddings=2048,
    )
    model = _model(config)
    assert inv_freq_of(model).numel() == 8  # 16 rotary dims of 32
    dims = model_rope_dims(model, 32)
    assert dims.pair[:16] == tuple(list(range(8)) * 2)
    assert dims.pair[16:] == (-1,) * 16 and set(dims.band[16:]) == {"none"}
    assert dims.frequency[9] == pytest.approx(10000.0 ** (-2 * 1 / 16), rel=1e-5)


def test_rope_errors():
    with pytest.raises(QKAblateError, match="no rotary embedding"):
        inv_freq_of(build("gpt2", plant=False))
    with pytest.raises(QKAblateError, match="more than half"):
        rope_dims(torch.ones(20), 32, 1024)


def test_profile_finds_the_planted_pair_in_every_head(tmp_path):
    model = build("llama")  # conftest plants one rotary pair of every Q/K head as massive
    batches = {
        24: [{"input_ids": prompts(2, 24, seed=s)} for s in range(3)],
        48: [{"input_ids": prompts(1, 48, seed=s)} for s in range(2)],
    }
    profile = profile_model(model, batches, "tiny-llama", "random")
    assert profile.samples == 2  # the smaller count of forwards of a length, per tensor
    summary = summarize(profile)
    planted_pairs = {d % 16 for d in MASSIVE_DIMS}
    for length in ("24", "48"):
        for name in ("q", "k"):
            pairs = summary["results"][length]["pre"][name]["pairs"]
            assert {p["pair"] for p in pairs if p["share_of_heads"] == 1.0} >= planted_pairs
    written = save_profile(profile, tmp_path) + save_heatmaps(profile, tmp_path)
    names = {p.name for p in written}
    assert {"profile.npz", "profile.json", "heatmap_post_q.png", "layers_pre_k_48.png"} <= names
    arrays = np.load(tmp_path / "profile.npz")
    assert arrays["L24_post_q_M"].shape == (2, 4, 32)
    assert json.loads((tmp_path / "profile.json").read_text())["rope"]["dims"][0]["pair"] == 0
    assert (tmp_path / "heatmap_post_q.png").read_bytes()[:4] == b"\x89PNG"
    from qk_ablate.probes.profile import load_profile

    again = load_profile(tmp_path)  # pictures can be redrawn from the saved arrays
    assert summarize(again) == json.loads((tmp_path / "profile.json").read_text())


def test_cli_profile_on_a_tiny_saved_model(tmp_path, capsys):
    from conftest import word_tokenizer

    from qk_ablate.cli import main

    build("llama").save_pretrained(tmp_path / "tiny")
    word_tokenizer().save_pretrained(tmp_path / "tiny")
    out = tmp_path / "profile"
    assert (
        main(
            [
                "profile",
                "--model",
                str(tmp_path / "tiny"),
                "--lengths",
                "128,256",
                "--samples",
                "2",
                "--source",
                "passkey",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    headline = capsys.readouterr().out
    assert "128 post-RoPE Q: massive in" in headline and "256  pre-RoPE K: massive in" in headline
    assert json.loads((out / "profile.json").read_text())["lengths"] == [128, 256]
    assert main(["profile", "--model", str(tmp_path / "tiny"), "--lengths", "1k"]) == 2  # over the 512 window
    assert "window of 512" in capsys.readouterr().err
    assert (
        main(
            [
                "profile",
                "--model",
                str(tmp_path / "tiny"),
                "--lengths",
                "128",
                "--samples",
                "1",
                "--attn-implementation",
                "no_such_kernel",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.startswith(f"qk-ablate: error: could not load model '{tmp_path / 'tiny'}'")


def test_cli_profile_in_bfloat16(tmp_path, monkeypatch):
    """A researcher's 7B model is profiled in the dtype and kernel asked for; statistics stay float32."""
    from conftest import word_tokenizer

    from qk_ablate.cli import main

    loaded = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def recording(*args, **kwargs):
        model = real(*args, **kwargs)
        loaded.append((model.dtype, model.config._attn_implementation))
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", recording)
    build("llama").save_pretrained(tmp_path / "tiny")
    word_tokenizer().save_pretrained(tmp_path / "tiny")
    out = tmp_path / "profile"
    assert (
        main(
            [
                "profile",
                "--model",
                str(tmp_path / "tiny"),
                "--lengths",
                "128",
                "--samples",
                "2",
                "--source",
                "passkey",
                "--dtype",
                "bfloat16",
                "--attn-implementation",
                "eager",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert loaded == [(torch.bfloat16, "eager")]
    arrays = np.load(out / "profile.npz")
    assert arrays["L128_post_q_M"].dtype == np.float32 and np.isfinite(arrays["L128_post_q_M"]).all()


@pytest.mark.parametrize("arch", ["deepseek_v3", "falcon"])
def test_profile_of_latent_attention_and_falcon(arch, tmp_path):
    """MLA: each tensor's own rotary layout labels its pairs (the planted pair 1 everywhere, pre and
    post, Q and K); Falcon, whose post-RoPE Q/K cannot be reached, is profiled pre-RoPE only."""
    from qk_ablate.probes.profile import load_profile

    model = build(arch)
    profile = profile_model(model, {24: [{"input_ids": prompts(2, 24, seed=1)}]}, arch, "random")
    summary = summarize(profile)
    if arch == "falcon":
        assert profile.where == ("pre",) and set(summary["results"]["24"]) == {"pre"}
        return
    assert set(summary["rope_other"]) >= {"pre_q", "pre_k"}  # interleaved pairs in the projections
    for where in ("pre", "post"):
        for name in ("q", "k"):
            top = summary["results"]["24"][where][name]["pairs"][0]
            assert (top["pair"], top["share_of_heads"]) == (1, 1.0), (where, name, top)
    save_profile(profile, tmp_path)
    assert summarize(load_profile(tmp_path)) == summary


def test_mean_fill_norm_ratio_of_constant_alternating_and_padded_columns():
    """|mean| / rms per column over the valid tokens: 1 for a constant column, 0 for one that
    averages to zero, padding left out; the profile reports it over the massive columns."""
    import torch

    from qk_ablate.core.selection import column_norms
    from qk_ablate.probes.massive_stats import mean_fill_norm_ratio

    x = torch.zeros(2, 1, 4, 3)  # [B, H, S, D]
    x[:, 0, :, 0] = 5.0  # constant
    x[:, 0, :, 1] = torch.tensor([1.0, -1.0, 1.0, -1.0])  # mean zero
    x[:, 0, :, 2] = torch.tensor([3.0, 1.0, 0.0, 0.0])  # mean 2, rms sqrt(5) over the first two
    valid = torch.tensor([[True] * 4, [False, False, True, True]])  # sample 1: left padding
    x[1, 0, 2:, 2] = torch.tensor([3.0, 1.0])
    x[1, 0, :2] = 100.0  # padding values never count
    ratio = mean_fill_norm_ratio(x, valid, column_norms(x, valid))
    assert ratio[0, 0].tolist() == pytest.approx([1.0, 0.0, 4 / (4**0.5 * 10**0.5)])
    assert ratio[1, 0].tolist() == pytest.approx([1.0, 0.0, 2 / 5**0.5])
