"""Controls over seeds: `seeds:` in a sweep, and the report's pooled row with its two-level bootstrap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from qk_ablate.errors import QKAblateError
from qk_ablate.stats.report import build_report, to_markdown
from qk_ablate.stats.runs import load_run
from qk_ablate.stats.seeds import parse_seeds, pooled_run, seed_groups
from qk_ablate.sweep import MARKER, load_config, run_sweep
from test_report import bernoulli, write_run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny model's folder (its own name: test_sweep's paths count on theirs being the first `tiny`)."""
    from conftest import tiny_folder

    return tiny_folder(tmp_path_factory, "seeds_model")


@pytest.mark.parametrize(
    ("value", "seeds"), [("0-4", [0, 1, 2, 3, 4]), ([0, 2, 5], [0, 2, 5]), ("1;3", [1, 3]), ("0-2;2", [0, 1, 2])]
)
def test_seed_lists(value, seeds):
    assert parse_seeds(value) == seeds


@pytest.mark.parametrize(
    ("value", "match"),
    [("4-0", "not valid"), ("a", "not valid"), (3, "pooling needs at least two"), (True, "not valid")],
)
def test_bad_seed_lists_are_one_line(value, match):
    with pytest.raises(QKAblateError, match=match):
        parse_seeds(value)


def _config(tmp_path: Path, model: Path, interventions: dict) -> Path:
    body = {
        "name": "seeds",
        "output": str(tmp_path / "runs"),
        "models": [{"pretrained": str(model)}],
        "interventions": interventions,
        "tasks": ["city_facts"],
        "limit": 2,
        "batch_size": 2,
        "device": "cpu",
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"ablate": "massive", "seeds": "0-2"}, "seeds only change a random draw"),
        ({"ablate": "nonmassive", "seed": 1, "seeds": "0-2"}, "either seed or seeds"),
        ({"ablate": "nonmassive", "control": "smallest", "seeds": "0-1"}, "random draw"),
    ],
)
def test_seeds_on_an_intervention_without_a_random_draw_are_refused(tmp_path, tiny, args, match):
    with pytest.raises(QKAblateError, match=f"intervention 'x': .*{match}"):
        load_config(_config(tmp_path, tiny, {"x": args}))


def test_sweep_with_three_seeds_makes_three_cells_and_a_rerun_redoes_none(tmp_path, tiny, monkeypatch):
    import lm_eval

    config = load_config(_config(tmp_path, tiny, {"baseline": {}, "control": {"ablate": "nonmassive", "seeds": "0-2"}}))
    assert list(config.interventions) == ["baseline", "control_seed0", "control_seed1", "control_seed2"]
    assert [s.seed for s in config.interventions.values()] == [0, 0, 1, 2]
    cells = run_sweep(config, log=lambda line: None)
    assert all((cell / MARKER).is_file() for cell in cells)
    calls: list[int] = []
    real = lm_eval.simple_evaluate
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    run_sweep(
        load_config(_config(tmp_path, tiny, {"baseline": {}, "control": {"ablate": "nonmassive", "seeds": "0-2"}})),
        log=lambda line: None,
    )
    assert calls == []
    report = build_report([load_run(cell) for cell in cells], iterations=200)
    labels = [run.label for run, _ in report.rows]
    assert labels[-1] == "ablate=nonmassive,seed=pooled 0-2"
    assert "seed=pooled 0-2" in to_markdown(report)


def test_pooled_interval_holds_seed_spread_on_planted_data(tmp_path):
    """Three seeds that cost 0, 20 and 40 points: each seed's own document interval is narrow, the
    pooled one must be at least as wide as any of them (it also resamples the seeds)."""
    base = bernoulli(200, 0.9, 1)
    runs = [load_run(write_run(tmp_path / "base", {"passkey_1k": base}))]
    ones = [i for i, v in enumerate(base) if v == 1.0]
    for seed, lost in enumerate((0, 40, 80)):
        scores = list(base)
        for i in ones[:lost]:
            scores[i] = 0.0
        spec = {"ablate": "nonmassive", "seed": seed}
        runs.append(load_run(write_run(tmp_path / f"seed{seed}", {"passkey_1k": scores}, spec=spec)))
    assert len(seed_groups(runs)) == 1
    report = build_report(runs, iterations=2000)
    by_label = {run.label: comparison for run, comparison in report.rows}
    pooled = by_label["ablate=nonmassive,seed=pooled 0-2"].tasks["passkey_1k"]
    assert pooled.value == pytest.approx(-0.2)
    widths = [by_label[f"ablate=nonmassive,seed={s}"].tasks["passkey_1k"] for s in range(3)]
    assert all(pooled.high - pooled.low >= w.high - w.low for w in widths)
    assert pooled.low < -0.3 and pooled.high > -0.1  # seed spread, not just document noise
    assert np.allclose(
        pooled_run(seed_groups(runs)[0]).tasks["passkey_1k"].scores,
        np.mean([r.tasks["passkey_1k"].scores for r in runs[1:]], axis=0),
    )
