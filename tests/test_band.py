"""`select=band`: as many dims per head as Definition 1 finds massive, drawn from one rotary band."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import HEAD_DIM, build, prompts

from qk_ablate.core.edits import Editor
from qk_ablate.core.selection import column_norms, massive_mask_threshold
from qk_ablate.core.spec import InterventionSpec
from qk_ablate.core.step import PREFILL, TensorSite
from qk_ablate.engines.hf.attachment import Attachment, band_dims
from qk_ablate.errors import QKAblateError

D = 16  # dims 0-7: high band, 8-11: mid, 12-15: low, in this synthetic head
BAND = {
    "high": torch.arange(D) < 8,
    "mid": (torch.arange(D) >= 8) & (torch.arange(D) < 12),
    "low": torch.arange(D) >= 12,
}


def _tensor(seed: int = 0) -> torch.Tensor:
    """`[2, 3, 10, D]` with massive dims 13 and 14 (low band) in heads 0 and 2, dim 3 (high) in head 1."""
    x = torch.randn(2, 3, 10, D, generator=torch.Generator().manual_seed(seed)) + 0.1  # no exact zeros
    x[:, [0, 2], :, 13:15] *= 40
    x[:, 1, :, 3] *= 40
    return x


def _chosen(band: str, exclude: str = "none", seed: int = 0, x: torch.Tensor | None = None) -> torch.Tensor:
    """The `[B, H, D]` columns a band run zeroes (read back from what changed)."""
    x = _tensor() if x is None else x
    spec = InterventionSpec(
        ablate="massive", select="band", band=band, exclude=exclude, fill="zero", seed=seed, targets="q"
    )
    editor = Editor(spec, frozenset({0}), band={"q": BAND[band]})
    edited = editor.edit(TensorSite(0, "q", "post"), x.clone(), PREFILL)
    return (edited == 0).all(dim=2)


def test_band_dims_are_in_the_band_and_as_many_as_are_massive_per_head():
    x = _tensor()
    massive = massive_mask_threshold(column_norms(x), 5.0)
    assert massive.sum(-1).tolist() == [[2, 1, 2], [2, 1, 2]]  # the planted dims and nothing else
    assert massive[:, 1, 3].all()
    for band in ("high", "mid", "low"):
        chosen = _chosen(band)
        assert not (chosen & ~BAND[band]).any()
        expected = torch.minimum(massive.sum(-1), BAND[band].sum())  # a band smaller than the count gives all it has
        assert torch.equal(chosen.sum(-1), expected)


def test_excluding_massive_dims_leaves_them_alone():
    x = _tensor()
    massive = massive_mask_threshold(column_norms(x), 5.0)
    chosen = _chosen("low", exclude="massive")
    assert not (chosen & massive).any()
    assert torch.equal(chosen.sum(-1), torch.minimum(massive.sum(-1), (BAND["low"] & ~massive).sum(-1)))
    assert not (_chosen("low") & ~BAND["low"]).any()


def test_band_draws_are_seeded():
    assert torch.equal(_chosen("high", seed=3), _chosen("high", seed=3))
    assert not torch.equal(_chosen("high", seed=3), _chosen("high", seed=4))


def test_band_of_a_real_model_comes_from_its_inv_freq():
    model = build("llama")
    config = model.config
    theta = config.rope_parameters["rope_theta"]
    wavelength = [2 * math.pi / theta ** (-2 * (d % (HEAD_DIM // 2)) / HEAD_DIM) for d in range(HEAD_DIM)]
    for band, test in (("high", lambda w: w < 64), ("low", lambda w: w > config.max_position_embeddings)):
        got = band_dims(model, InterventionSpec(ablate="massive", select="band", band=band))
        expected = torch.tensor([test(w) for w in wavelength])
        assert torch.equal(got["q"], expected) and torch.equal(got["k"], expected)
    pairs = band_dims(model, InterventionSpec(ablate="massive", select="band", pairs="14-15"))["k"]
    assert pairs.nonzero().flatten().tolist() == [14, 15, 30, 31]


def test_band_attachment_detaches_bit_exact_and_counts_what_it_chose():
    model = build("llama")
    ids = prompts()
    with torch.no_grad():
        plain = model(ids).logits
        attachment = Attachment(model, InterventionSpec(ablate="massive", select="band", band="mid", seed=1)).attach()
        changed = model(ids).logits
        counts = attachment.tally().summary()
        attachment.remove()
        assert torch.equal(model(ids).logits, plain)
    assert not torch.equal(changed, plain)
    assert counts["q"]["dims_per_head"] > 0 and counts["k"]["heads"] > 0


def test_a_selection_that_chooses_nothing_changes_nothing_and_says_so(capsys):
    from qk_ablate.core.record import warn_if_nothing_selected

    model = build("llama")
    ids = prompts()
    spec = InterventionSpec(ablate="massive", lam=math.inf)
    with torch.no_grad():
        plain = model(ids).logits
        with Attachment(model, spec) as attachment:
            assert torch.equal(model(ids).logits, plain)
            counts = attachment.tally().summary()
    assert counts["q"]["dims_per_head"] == 0 and counts["q"]["heads"] > 0
    warn_if_nothing_selected(spec, counts)
    assert "chose no dim of K/Q on any prompt (lam=inf)" in capsys.readouterr().err


def test_bands_a_model_does_not_have_are_one_line():
    model = build("llama")
    with pytest.raises(QKAblateError, match="pairs=40-41: this model's k has rotary pairs 0-15"):
        Attachment(model, InterventionSpec(ablate="massive", select="band", pairs="40-41"))
