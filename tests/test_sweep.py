"""Sweeps: config validation, one folder per cell in lm_eval's layout, and resuming after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qk_ablate.errors import QKAblateError
from qk_ablate.sweep import MARKER, load_config, run_sweep


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from conftest import tiny_folder

    return tiny_folder(tmp_path_factory)


def _config(tmp_path: Path, tiny: Path, **extra) -> Path:
    body = {
        "name": "test",
        "output": str(tmp_path / "runs"),
        "leaderboard": str(tmp_path / "leaderboard.md"),
        "models": [{"pretrained": str(tiny)}],
        "interventions": {
            "baseline": {},
            "massive": {"ablate": "massive"},
            "int4": {"quant": "int4", "protect": "massive"},
        },
        "tasks": ["city_facts"],
        "limit": 2,
        "batch_size": 2,
        "device": "cpu",
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    import yaml

    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"interventions": {"x": {"ablate": "massiv"}}}, "intervention 'x'.*ablate='massiv'"),
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"tasks": []}, "names no task"),
        ({"limit": 0}, "'limit'"),
        ({"models": [{"dtype": "float32"}]}, "'pretrained'"),
        (
            {"models": [{"pretrianed": "x"}]},
            "model 1 has no 'pretrained'; 'pretrianed' is not a model argument; did you mean 'pretrained'",
        ),
        ({"engine": "sglang"}, "engine must be one of hf, vllm"),
        ({"engine": "vllm", "profile": {"lengths": [128]}}, "profile runs the HF model"),
    ],
)
def test_bad_configs_fail_before_any_model_loads(tmp_path, tiny, change, match):
    with pytest.raises(QKAblateError, match=match):
        load_config(_config(tmp_path, tiny, **change))


def test_killed_sweep_resumes_without_redoing_finished_cells(tmp_path, tiny, monkeypatch):
    import lm_eval

    config = load_config(_config(tmp_path, tiny))
    real = lm_eval.simple_evaluate
    calls: list[str] = []

    def killed_on_second_cell(*args, **kwargs):
        calls.append(kwargs["model"].spec.ablate + "/" + kwargs["model"].spec.quant)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job is killed while the second cell runs
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", killed_on_second_cell)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, log=lambda line: None)
    first = config.output / "tiny0" / "baseline"
    assert (first / MARKER).is_file()
    stamp = (first / MARKER).stat().st_mtime_ns
    assert not (config.output / "tiny0" / "massive" / MARKER).exists()

    calls.clear()

    def counting(*args, **kwargs):
        calls.append(kwargs["model"].spec.ablate + "/" + kwargs["model"].spec.quant)
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", counting)
    cells = run_sweep(config, log=lambda line: None)
    assert calls == ["massive/none", "none/int4"]  # the finished baseline is not rerun
    assert (first / MARKER).stat().st_mtime_ns == stamp
    assert all((cell / MARKER).is_file() for cell in cells)
    calls.clear()
    run_sweep(config, log=lambda line: None)
    assert calls == []  # everything finished: nothing runs


def test_cli_sweep_writes_report_and_leaderboard(tmp_path, tiny, capsys):
    from qk_ablate.cli import main

    path = _config(tmp_path, tiny, interventions={"baseline": {}, "massive": {"ablate": "massive"}})
    assert main(["sweep", str(path), "--iterations", "200"]) == 0
    out = capsys.readouterr().out
    assert "| baseline |" in out and "| ablate=massive |" in out
    board = (tmp_path / "leaderboard.md").read_text()
    assert board.startswith("# Leaderboard: test") and f"qk-ablate sweep {path}" in board
    assert (tmp_path / "runs" / "report.md").is_file() and (tmp_path / "runs" / "report_deltas.png").is_file()
    recorded = json.loads(next((tmp_path / "runs" / "tiny0" / "massive").rglob("results_*.json")).read_text())
    assert recorded["config"]["qk_ablate"]["ablate"] == "massive"


def test_unknown_task_fails_with_a_hint_before_the_model_loads(tmp_path, tiny, monkeypatch):
    import qk_ablate.engines.hf.lm

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load for a config with an unknown task")

    monkeypatch.setattr(qk_ablate.engines.hf.lm, "QKAblatedLM", no_model)
    config = load_config(_config(tmp_path, tiny, tasks=["passkey_1kk"]))
    with pytest.raises(QKAblateError, match=r"unknown task 'passkey_1kk'; did you mean passkey_1k"):
        run_sweep(config, log=lambda line: None)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"include_path": "/no/such/folder"}, "include_path '/no/such/folder' is not a folder"),
        ({"kinds": {"my_facts": "factual"}}, "kinds entry 'my_facts=factual'"),
    ],
)
def test_bad_include_path_or_kinds(tmp_path, tiny, change, match):
    with pytest.raises(QKAblateError, match=match):
        load_config(_config(tmp_path, tiny, **change))


def test_sweep_runs_a_users_own_task_with_its_kind(tmp_path, tiny):
    """include_path finds a facts_csv task; kinds makes it parametric in the report (the tiny random
    model answers none of it, at the template's declared chance 0, so the report leaves it out of the
    parametric mean and says so)."""
    from qk_ablate.cli import main

    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    (tasks / "facts.csv").write_text("question,answer\n" + "".join(f"Q{i}?,w{i}\n" for i in range(6)), encoding="utf-8")
    (tasks / "my_facts.yaml").write_text(
        f"include: qk_ablate:facts_csv\ntask: my_facts\ndataset_kwargs:\n  facts_csv: {tasks / 'facts.csv'}\n"
    )
    path = _config(
        tmp_path,
        tiny,
        tasks=["my_facts"],
        include_path=str(tasks),
        kinds={"my_facts": "parametric"},
        interventions={"baseline": {}, "massive": {"ablate": "massive"}},
    )
    assert main(["sweep", str(path), "--iterations", "200"]) == 0
    import csv

    rows = list(csv.DictReader((tmp_path / "runs" / "report.csv").open()))
    assert [r["intervention"] for r in rows] == ["baseline", "ablate=massive"]
    assert rows[0]["my_facts"] == "0.00" and rows[0]["no_signal"] == "my_facts"
    assert rows[0]["parametric"] == rows[0]["contextual"] == ""
    report = (tmp_path / "runs" / "report.md").read_text()
    assert "documents): 0.0% is not distinguishable from chance (0.0%" in report
    assert "left out of the parametric mean" in report


@pytest.mark.parametrize(
    ("profile", "match"),
    [
        ({"samples": 2}, "give a mapping with lengths"),
        ({"lengths": ["1kk"]}, "unknown length '1kk'"),
        ({"lengths": [128], "samples": 0}, "samples must be"),
        ({"lengths": [128], "source": "imdb"}, "source must be"),
        ({"lengths": [128], "colour": 1}, "unknown key 'colour'"),
    ],
)
def test_bad_profile_settings(tmp_path, tiny, profile, match):
    with pytest.raises(QKAblateError, match=match):
        load_config(_config(tmp_path, tiny, profile=profile))


def test_sweep_profiles_each_model_once(tmp_path, tiny, monkeypatch):
    """`profile:` writes the model's profile beside its cells; a rerun keeps it, new settings redo it."""
    import qk_ablate.probes.profile

    config = load_config(_config(tmp_path, tiny, profile={"lengths": "128,256", "samples": 2, "source": "passkey"}))
    run_sweep(config, log=lambda line: None)
    folder = config.output / "tiny0" / "profile"
    summary = json.loads((folder / "profile.json").read_text())
    assert summary["lengths"] == [128, 256] and summary["samples_per_length"] == 2
    assert (folder / "heatmap_post_q.png").is_file() and (folder / "profile.npz").is_file()

    calls = []
    real = qk_ablate.probes.profile.run_profile
    monkeypatch.setattr(qk_ablate.probes.profile, "run_profile", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    run_sweep(config, log=lambda line: None)
    assert calls == []  # same settings: kept, and no model loads for a finished grid
    run_sweep(load_config(_config(tmp_path, tiny, profile={"lengths": [128], "samples": 2})), log=lambda line: None)
    assert calls == [[128]]


def test_profile_longer_than_the_window_stops_before_any_cell(tmp_path, tiny):
    config = load_config(_config(tmp_path, tiny, profile={"lengths": ["1k"]}))  # the tiny window is 512
    with pytest.raises(QKAblateError, match="window of 512"):
        run_sweep(config, log=lambda line: None)
    assert not (config.output / "tiny0" / "baseline").exists()


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["demo", "paper"])
def test_shipped_configs_are_valid(name):
    config = load_config(ROOT / "configs" / f"{name}.yaml")
    assert "baseline" in config.interventions and config.profile is not None


def test_committed_paper_results_agree_with_their_own_recorded_settings():
    """results/paper is checked against what its cells recorded (cell.json), not against today's
    configs/paper.yaml, so editing a config never fails CI until a multi-hour sweep is rerun."""
    from qk_ablate.stats.report import build_report, to_markdown
    from qk_ablate.stats.runs import load_run

    markers = sorted((ROOT / "results" / "paper").rglob(MARKER))
    assert len(markers) == 5
    runs = []
    for marker in markers:
        settings = json.loads(marker.read_text())["settings"]
        run = load_run(marker.parent)
        assert run.intervention == settings["intervention"], marker
        assert sorted(run.tasks) == sorted(settings["tasks"]), marker
        assert all(len(scores.doc_ids) <= settings["limit"] for scores in run.tasks.values()), marker
        runs.append(run)
    committed = set((ROOT / "results" / "paper" / "report.md").read_text().splitlines())
    assert set(to_markdown(build_report(runs)).splitlines()) <= committed  # the table, remade from the cells
