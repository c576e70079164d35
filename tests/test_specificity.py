"""Specificity (`stats/specificity.py`): massive destruction against its pooled random control, per kind,
paired per document, with an interval over documents and seeds, and the claims a report states."""

from __future__ import annotations

import numpy as np
import pytest

from qk_ablate.stats.report import build_report, to_markdown
from qk_ablate.stats.runs import load_run
from qk_ablate.stats.specificity import find_specificity
from test_report import bernoulli, write_run

N = 200
MASSIVE = {"ablate": "massive", "seed": 0}


def _drop(scores: list[float], count: int, seed: int) -> list[float]:
    """`scores` with `count` of its correct documents (a seeded choice) turned wrong."""
    ones = [i for i, v in enumerate(scores) if v == 1.0]
    chosen = np.random.default_rng(seed).choice(ones, size=count, replace=False)
    return [0.0 if i in set(chosen.tolist()) else v for i, v in enumerate(scores)]


@pytest.fixture
def grid(tmp_path):
    """Baseline; massive destruction losing 60 of 200 passkey documents and 20 of 200 facts; three
    control seeds losing about 10 passkey documents and about 20 facts."""
    passkey, facts = bernoulli(N, 0.9, 1), bernoulli(N, 0.7, 2)
    runs = [load_run(write_run(tmp_path / "base", {"passkey_1k": passkey, "city_facts": facts}))]
    massive = {"passkey_1k": _drop(passkey, 60, 3), "city_facts": _drop(facts, 20, 4)}
    runs.append(load_run(write_run(tmp_path / "massive", massive, MASSIVE)))
    for seed in range(3):
        scores = {"passkey_1k": _drop(passkey, 8 + 2 * seed, 10 + seed), "city_facts": _drop(facts, 20, 20 + seed)}
        spec = {"ablate": "nonmassive", "seed": seed}
        runs.append(load_run(write_run(tmp_path / f"control{seed}", scores, spec)))
    return runs


def test_massive_minus_the_pooled_control_per_kind(grid):
    (item,) = find_specificity(grid, ["passkey_1k", "city_facts"], iterations=2000)
    assert item.seeds == (0, 1, 2)
    contextual, parametric = item.difference("contextual"), item.difference("parametric")
    massive, controls = grid[1], grid[2:]
    expected = massive.tasks["passkey_1k"].mean - np.mean([c.tasks["passkey_1k"].mean for c in controls])
    assert contextual.value == pytest.approx(expected)  # -(60 - 10) / 200 = -0.25
    assert contextual.value == pytest.approx(-0.25)
    assert contextual.low <= contextual.value <= contextual.high < 0
    assert item.specific("contextual") is True
    assert parametric.value == pytest.approx(0.0) and parametric.low < 0 < parametric.high
    assert item.specific("parametric") is False


def test_the_report_states_which_claims_its_table_supports(grid):
    text = to_markdown(build_report(grid, iterations=2000))
    assert "massive destruction minus its random non-massive control" in text
    assert "| smollm2-135m | ablate=massive | ablate=nonmassive (seeds 0, 1, 2) | -25.0 [" in text
    assert (
        "contextual loss specific to the massive dims (against ablate=nonmassive (seeds 0, 1, 2)): yes at 95%" in text
    )
    assert "parametric loss specific to the massive dims (against ablate=nonmassive (seeds 0, 1, 2)): no at 95%" in text


def test_one_control_seed_is_compared_alone_and_named(grid):
    one_seed = find_specificity(grid[:3], ["passkey_1k"], iterations=2000)[0]
    assert one_seed.seeds == (0,)
    single = one_seed.difference("contextual")
    assert single.value == pytest.approx(grid[1].tasks["passkey_1k"].mean - grid[2].tasks["passkey_1k"].mean)
    assert "seed 0)" in one_seed.control_label


def test_no_control_no_section_and_other_interventions_are_not_matched(tmp_path, grid):
    assert find_specificity(grid[:2], ["passkey_1k"]) == []
    assert "Specificity" not in to_markdown(build_report(grid[:2], iterations=200))
    other = load_run(
        write_run(
            tmp_path / "q",
            {"passkey_1k": grid[2].tasks["passkey_1k"].scores.tolist()},
            {"ablate": "nonmassive", "seed": 0, "targets": "q"},
        )
    )
    assert find_specificity([*grid[:2], other], ["passkey_1k"]) == []  # a control of another place is no control
