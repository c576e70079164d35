"""Which dims: the threshold and top-k selections, and the matched non-massive control."""

from __future__ import annotations

import torch

from qk_ablate.core.destroy import destroy_columns, fill_values
from qk_ablate.core.selection import (
    column_norms,
    control_mask,
    massive_mask_threshold,
    massive_mask_topk,
    random_scores,
)


def test_column_norms_exclude_padding():
    x = torch.zeros(1, 1, 3, 2)
    x[0, 0, :, 0] = torch.tensor([100.0, 3.0, 4.0])
    valid = torch.tensor([[False, True, True]])
    assert column_norms(x, valid)[0, 0].tolist() == [5.0, 0.0]


def test_threshold_is_lam_times_the_head_mean():
    norms = torch.tensor([[[10.0, 1.0, 1.0, 1.0, 1.0]]])  # mean 2.8: 10 > 2 * 2.8, 10 < 5 * 2.8
    assert massive_mask_threshold(norms, 2.0)[0, 0].tolist() == [True, False, False, False, False]
    assert not massive_mask_threshold(norms, 5.0).any()


def test_topk_takes_k_per_head():
    norms = torch.tensor([[[1.0, 5.0, 3.0, 4.0], [9.0, 1.0, 2.0, 0.0]]])
    assert massive_mask_topk(norms, 2)[0].int().tolist() == [[0, 1, 0, 1], [1, 0, 1, 0]]


def test_control_matches_counts_per_head_is_disjoint_and_seeded():
    generator = torch.Generator().manual_seed(0)
    massive = torch.rand(3, 5, 64, generator=generator) > 0.9  # varying counts per (sample, head)
    scores = random_scores(5, 64, seed=7, salt=1, device=torch.device("cpu"))
    control = control_mask(massive, scores)
    assert torch.equal(control.sum(-1), massive.sum(-1))
    assert not (control & massive).any()
    assert torch.equal(control, control_mask(massive, random_scores(5, 64, seed=7, salt=1, device=torch.device("cpu"))))
    assert not torch.equal(
        control, control_mask(massive, random_scores(5, 64, seed=8, salt=1, device=torch.device("cpu")))
    )


def test_smallest_control_takes_the_smallest_norms():
    norms = torch.tensor([[[9.0, 0.5, 8.0, 0.1, 3.0, 0.2]]])
    massive = norms > 7
    assert control_mask(massive, norms)[0, 0].tolist() == [False, False, False, True, False, True]


def test_destroy_fills_only_selected_prompt_entries():
    x = torch.arange(24, dtype=torch.float32).reshape(1, 2, 3, 4)
    columns = torch.zeros(1, 2, 4, dtype=torch.bool)
    columns[0, 1, 2] = True
    prompt = torch.tensor([[False, True, True]])  # position 0 is padding
    out = destroy_columns(x, columns, prompt, fill_values(x, prompt, "mean"))
    expected = x.clone()
    expected[0, 1, 1:, 2] = (x[0, 1, 1, 2] + x[0, 1, 2, 2]) / 2
    assert torch.equal(out, expected)
