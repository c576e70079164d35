"""Paired bootstrap, report and gate on synthetic lm_eval run folders with known answers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from qk_ablate.cli import main
from qk_ablate.errors import QKAblateError
from qk_ablate.stats.compare import compare
from qk_ablate.stats.gate import FAIL, PASS, UNUSABLE, parse_budgets, run_gate
from qk_ablate.stats.report import build_report, to_csv, to_html, to_markdown, write_report
from qk_ablate.stats.runs import describe, load_run

STAMP = "2026-01-01T00-00-00.000000"


def write_run(
    folder: Path,
    scores: dict[str, list[float]],
    spec: dict | None = None,
    texts: str = "doc",
    stamp: str = STAMP,
    declared: dict[str, str] | None = None,
    records: dict[str, list[dict]] | None = None,
    metadata: dict[str, dict] | None = None,
    choices: dict[str, list[str]] | None = None,
) -> Path:
    """An lm_eval --output_path folder: results JSON and one samples file per task; `declared`
    puts a task's `kind` into its config's metadata, as a task YAML with `metadata: {kind: ...}` does;
    `records` adds fields to each sample record (answers), `metadata` to a task's config metadata,
    `choices` a multiple-choice task's doc_to_choice."""
    sub = folder / "smollm2-135m"
    sub.mkdir(parents=True, exist_ok=True)
    results = {}
    for task, values in scores.items():
        results[task] = {"acc,none": float(np.mean(values)), "acc_stderr,none": 0.0}
        with (sub / f"samples_{task}_{stamp}.jsonl").open("w") as handle:
            for i, value in enumerate(values):
                doc_hash = hashlib.sha256(f"{texts}/{task}/{i}".encode()).hexdigest()
                extra = (records or {}).get(task, [{}] * len(values))[i]
                handle.write(
                    json.dumps(
                        {"doc_id": i, "doc_hash": doc_hash, "filter": "none", "metrics": ["acc"], "acc": value, **extra}
                    )
                    + "\n"
                )
    config = {
        "model": "qk_ablated",
        "qk_ablate": {"model": "smollm2-135m", "version": "0", **(spec or {"ablate": "none"})},
    }
    configs = {
        t: {
            "task": t,
            "metadata": {
                "version": 1.0,
                **({"kind": declared[t]} if t in (declared or {}) else {}),
                **(metadata or {}).get(t, {}),
            },
            **({"doc_to_choice": choices[t]} if t in (choices or {}) else {}),
        }
        for t in scores
    }
    (sub / f"results_{stamp}.json").write_text(
        json.dumps(
            {"results": results, "group_subtasks": {t: [] for t in scores}, "configs": configs, "config": config}
        )
    )
    return folder


def bernoulli(n: int, p: float, seed: int) -> list[float]:
    return list((np.random.default_rng(seed).random(n) < p).astype(float))


@pytest.fixture
def pair(tmp_path):
    """A baseline and a candidate that lost exactly 20 points on 200 paired passkey documents."""
    base = bernoulli(200, 0.9, 1)
    ones = [i for i, v in enumerate(base) if v == 1.0]
    cand = list(base)
    for i in ones[:40]:  # 40 of 200 documents flip from right to wrong: a 20-point drop
        cand[i] = 0.0
    facts = bernoulli(200, 0.7, 2)
    a = write_run(tmp_path / "base", {"passkey_1k": base, "city_facts": facts})
    b = write_run(tmp_path / "cand", {"passkey_1k": cand, "city_facts": facts}, {"ablate": "massive"})
    return a, b


def test_identical_runs_give_a_narrow_interval_around_zero(tmp_path):
    scores = {"passkey_1k": bernoulli(200, 0.6, 3), "city_facts": bernoulli(200, 0.5, 4)}
    a, b = write_run(tmp_path / "a", scores), write_run(tmp_path / "b", scores, {"ablate": "none"})
    result = compare(load_run(a), load_run(b))
    for estimate in [*result.tasks.values(), *result.deltas.values(), result.interaction]:
        assert estimate.low <= 0 <= estimate.high
        assert estimate.high - estimate.low < 1e-9  # paired: identical documents never differ


def test_planted_twenty_point_drop_is_found_and_excludes_zero(pair):
    result = compare(load_run(pair[0]), load_run(pair[1]))
    drop = result.tasks["passkey_1k"]
    assert drop.value == pytest.approx(-0.20)
    assert drop.excludes_zero() and drop.high < -0.10 and drop.low > -0.30
    assert result.deltas["contextual"].value == pytest.approx(-0.20)
    assert result.deltas["parametric"].value == 0.0
    assert result.interaction.value == pytest.approx(-0.20) and result.interaction.excludes_zero()


def test_unpaired_documents_are_an_error(tmp_path):
    a = write_run(tmp_path / "a", {"passkey_1k": [1.0] * 10})
    fewer = write_run(tmp_path / "b", {"passkey_1k": [1.0] * 9})
    other = write_run(tmp_path / "c", {"passkey_1k": [1.0] * 10}, texts="other seed")
    with pytest.raises(QKAblateError, match="different documents"):
        compare(load_run(a), load_run(fewer))
    with pytest.raises(QKAblateError, match="cannot be paired"):
        compare(load_run(a), load_run(other))


def test_samples_with_unicode_line_separators_in_documents(tmp_path):
    """lm-eval writes documents unescaped: U+0085 / U+2028 inside a record are not line ends."""
    run = write_run(tmp_path / "a", {"imdb": [1.0, 0.0]})
    samples = next(run.rglob("samples_imdb_*.jsonl"))
    lines = samples.read_text().split("\n")
    record = json.loads(lines[0])
    record["doc"] = {"review": "a film\x85 that\u2028 ends"}
    lines[0] = json.dumps(record, ensure_ascii=False)
    samples.write_text("\n".join(lines), encoding="utf-8")
    assert load_run(run).tasks["imdb"].scores.tolist() == [1.0, 0.0]


def test_gzipped_samples_read_as_the_plain_file_and_a_broken_one_is_one_error(tmp_path):
    """Committed results keep their samples as .jsonl.gz; the scores and pairing are unchanged."""
    import gzip

    run = write_run(tmp_path / "a", {"imdb": [1.0, 0.0, 1.0]})
    plain = load_run(run).tasks["imdb"]
    samples = next(run.rglob("samples_imdb_*.jsonl"))
    samples.with_name(samples.name + ".gz").write_bytes(gzip.compress(samples.read_bytes()))
    samples.unlink()
    packed = load_run(run).tasks["imdb"]
    assert packed.scores.tolist() == plain.scores.tolist() and packed.doc_hashes == plain.doc_hashes
    samples.with_name(samples.name + ".gz").write_bytes(b"not gzip")
    with pytest.raises(QKAblateError, match=r"samples_imdb_.*\.jsonl\.gz' is not readable"):
        load_run(run)


def test_describe_names_only_what_matters():
    assert describe({"ablate": "none", "quant": "none", "seed": 3}) == "baseline"
    assert describe({"ablate": "nonmassive", "seed": 2, "quant": "none", "group": 32}) == "ablate=nonmassive,seed=2"
    assert describe({"ablate": "nonmassive", "seed": 0, "quant": "none"}) == "ablate=nonmassive,seed=0"  # a draw
    assert describe({"ablate": "massive", "seed": 0, "quant": "none"}) == "ablate=massive"  # no draw
    assert (
        describe({"ablate": "massive", "fill": "shuffle", "seed": 0, "quant": "none"})
        == "ablate=massive,fill=shuffle,seed=0"
    )
    assert (
        describe({"ablate": "none", "quant": "int4", "protect": "massive", "seed": 0}) == "quant=int4,protect=massive"
    )


def test_report_formats(pair, tmp_path):
    report = build_report([load_run(pair[1]), load_run(pair[0])], iterations=2000)
    md = to_markdown(report)
    assert md.splitlines()[2].startswith("| smollm2-135m | baseline |")  # baseline first
    candidate = 100 * load_run(pair[1]).tasks["passkey_1k"].mean
    assert f"| smollm2-135m | ablate=massive | {candidate:.1f} (-20.0 [" in md
    csv_text = to_csv(report)
    assert csv_text.splitlines()[0].startswith("model,intervention,passkey_1k,passkey_1k_delta")
    assert "<table>" in to_html(report)
    written = write_report(report, tmp_path / "out")
    assert sorted(p.name for p in written) == ["report.csv", "report.html", "report.md", "report_deltas.png"]
    assert (tmp_path / "out" / "report_deltas.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "out" / "report.html").read_text()
    assert '<img src="data:image/png;base64,' in page and "95% paired bootstrap interval" in page
    assert '<td data-value="">ablate=massive</td>' in page and "<h1>qk-ablate report: smollm2-135m</h1>" in page
    assert "Made by <code>" in page and "qk-ablate " in page  # provenance: command, versions, date


def test_report_on_a_subset_of_tasks(pair):
    report = build_report([load_run(pair[0]), load_run(pair[1])], iterations=500, only=["passkey_1k"])
    assert report.tasks == ["passkey_1k"]
    assert "parametric" not in report.rows[1][1].deltas and report.rows[1][1].interaction is None
    with pytest.raises(QKAblateError, match="no baseline run has"):
        build_report([load_run(pair[0])], only=["niah_1k"])


def test_report_needs_a_baseline(pair):
    with pytest.raises(QKAblateError, match="no baseline"):
        build_report([load_run(pair[1])])


def test_gate_passes_identical_runs_and_fails_a_planted_drop(pair, tmp_path):
    same = run_gate(pair[0], pair[0], "contextual=2,parametric=2", junit=tmp_path / "pass.xml")
    assert same.code == PASS and "pass." in same.reason
    dropped = run_gate(pair[0], pair[1], "contextual=2,parametric=2", junit=tmp_path / "fail.xml")
    assert dropped.code == FAIL
    assert "contextual dropped 20.0 points" in dropped.reason and "exceeds its budget of 2" in dropped.reason
    assert "parametric dropped 0.0 points" in dropped.reason
    xml = (tmp_path / "fail.xml").read_text()
    assert 'failures="1"' in xml and "<failure" in xml
    run_gate(pair[0], pair[1], "contextual=2,parametric=2", json_path=tmp_path / "fail.json")
    body = json.loads((tmp_path / "fail.json").read_text())
    assert body["code"] == FAIL and body["verdict"] == "fail" and body["reason"] == dropped.reason
    by_name = {c["name"]: c for c in body["checks"]}
    assert by_name["contextual"]["drop"] == pytest.approx(20.0) and not by_name["contextual"]["passed"]
    assert by_name["contextual"]["drop_low"] > 2 and by_name["parametric"]["passed"]
    assert run_gate(pair[0], pair[1], "contextual=25,parametric=2").code == PASS  # budget above the drop
    assert run_gate(pair[0], pair[1], "passkey_1k=19").code == FAIL


@pytest.mark.parametrize(
    "damage", ["missing", "empty", "corrupt", "no_samples", "task_missing", "bad_budget", "unknown_name"]
)
def test_gate_exits_2_when_it_cannot_compare(pair, tmp_path, damage):
    base, cand = pair
    budgets = "contextual=2,parametric=2"
    results = next(cand.rglob("results_*.json"))
    if damage == "missing":
        cand = tmp_path / "nowhere"
    elif damage == "empty":
        results.write_text("")
    elif damage == "corrupt":
        results.write_text('{"results": ')
    elif damage == "no_samples":
        next(cand.rglob("samples_city_facts_*.jsonl")).unlink()
    elif damage == "task_missing":
        cand = write_run(tmp_path / "partial", {"passkey_1k": [1.0] * 200}, {"ablate": "massive"})
    elif damage == "bad_budget":
        budgets = "contextual=two"
    elif damage == "unknown_name":
        budgets = "contextual=2,niah_1k=3"
    verdict = run_gate(base, cand, budgets, junit=tmp_path / "gate.xml", json_path=tmp_path / "gate.json")
    assert verdict.code == UNUSABLE, verdict.reason
    assert verdict.reason.startswith("could not compare the runs:")
    assert "<error" in (tmp_path / "gate.xml").read_text()
    assert json.loads((tmp_path / "gate.json").read_text())["verdict"] == "unusable"


def test_cli_report_and_gate(pair, tmp_path, capsys):
    assert main(["report", str(pair[0]), str(pair[1]), "--out", str(tmp_path / "rep"), "--iterations", "500"]) == 0
    assert "| smollm2-135m | baseline |" in capsys.readouterr().out
    assert (tmp_path / "rep" / "report.md").is_file()
    assert main(["gate", "--baseline", str(pair[0]), "--candidate", str(pair[1]), "--max-drop", "contextual=2"]) == 1
    assert main(["gate", "--baseline", str(pair[0]), "--candidate", str(pair[0]), "--max-drop", "contextual=2"]) == 0
    assert main(["report", str(pair[0]), "--kinds", "x=both"]) == 2
    assert "must be TASK=contextual or TASK=parametric" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()  # a folder where the report file should go
    assert (
        main(
            [
                "gate",
                "--baseline",
                str(pair[0]),
                "--candidate",
                str(pair[0]),
                "--max-drop",
                "contextual=2",
                "--junit",
                str(tmp_path / "taken"),
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.startswith(
        f"qk-ablate: error: could not write the gate report '{tmp_path / 'taken'}'"
    )


def test_parse_budgets():
    assert parse_budgets("contextual=2, parametric=0.5") == {"contextual": 2.0, "parametric": 0.5}
    for bad in ("", "contextual", "contextual=-1", "=2"):
        with pytest.raises(QKAblateError):
            parse_budgets(bad)


@pytest.fixture
def own(tmp_path):
    """Runs with a user's own contextual task `my_niah` (40 of 100 documents lost) beside passkey_1k (unchanged)."""
    niah = [1.0] * 100
    lost = [0.0] * 40 + [1.0] * 60
    keys = bernoulli(100, 0.8, 5)

    def make(name: str, declared: dict | None = None) -> tuple[Path, Path]:
        base = write_run(
            tmp_path / f"{name}_base", {"passkey_1k": keys, "my_niah": niah, "city_facts": keys}, declared=declared
        )
        cand = write_run(
            tmp_path / f"{name}_cand",
            {"passkey_1k": keys, "my_niah": lost, "city_facts": keys},
            {"ablate": "massive"},
            declared=declared,
        )
        return base, cand

    return make


def test_own_tasks_count_alike_in_report_and_gate_with_kinds(own, capsys):
    base, cand = own("flag")
    unflagged = run_gate(base, cand, "contextual=2")
    assert unflagged.code == PASS and "contextual dropped 0.0 points" in unflagged.reason
    assert "Warning: my_niah counted in neither the contextual nor the parametric mean" in unflagged.reason
    flagged = run_gate(base, cand, "contextual=2", kinds={"my_niah": "contextual"})
    assert (
        flagged.code == FAIL and "contextual dropped 20.0 points" in flagged.reason and "Warning" not in flagged.reason
    )
    report = build_report([load_run(base), load_run(cand)], kinds={"my_niah": "contextual"}, iterations=500)
    assert report.rows[1][1].deltas["contextual"].value == pytest.approx(-0.20)
    assert build_report([load_run(base), load_run(cand)], iterations=500).unclassified == ["my_niah"]
    assert (
        main(
            [
                "gate",
                "--baseline",
                str(base),
                "--candidate",
                str(cand),
                "--max-drop",
                "contextual=2",
                "--kinds",
                "my_niah=contextual",
            ]
        )
        == 1
    )
    assert main(["report", str(base), str(cand), "--iterations", "200"]) == 0
    assert "qk-ablate: warning: my_niah counted in neither" in capsys.readouterr().err


def test_the_page_groups_own_tasks_by_the_kind_the_report_counts_them_under(own):
    """The HTML page's column groups follow --kinds and YAML kinds, as the means do."""
    from qk_ablate.stats.page import to_page

    base, cand = own("page")
    runs = [load_run(base), load_run(cand)]
    other = to_page(build_report(runs, iterations=200), set())
    assert '<th class="group" colspan="1">other tasks</th>' in other
    grouped = to_page(build_report(runs, kinds={"my_niah": "contextual"}, iterations=200), set())
    assert '<th class="group" colspan="2">contextual tasks</th>' in grouped and "other tasks" not in grouped
    declared, cand = own("page_declared", declared={"my_niah": "parametric"})
    page = to_page(build_report([load_run(declared), load_run(cand)], iterations=200), set())
    assert '<th class="group" colspan="2">parametric tasks</th>' in page and "other tasks" not in page


def test_kind_declared_in_the_task_yaml_needs_no_flag(own):
    base, cand = own("declared", declared={"my_niah": "contextual"})
    assert load_run(base).kinds == {"my_niah": "contextual"}
    verdict = run_gate(base, cand, "contextual=2")
    assert verdict.code == FAIL and "contextual dropped 20.0 points" in verdict.reason
    report = build_report([load_run(base), load_run(cand)], iterations=500)
    assert report.unclassified == [] and report.rows[1][1].deltas["contextual"].value == pytest.approx(-0.20)
    overridden = run_gate(base, cand, "parametric=2", kinds={"my_niah": "parametric"})  # --kinds wins
    assert (
        overridden.code == FAIL and "parametric dropped 20.0 points" in overridden.reason
    )  # 40 of 200 pooled documents


def test_bad_declared_kind_is_one_line(own):
    base, _ = own("bad", declared={"my_niah": "factual"})
    with pytest.raises(QKAblateError, match="the kind of my_niah must be contextual or parametric, got 'factual'"):
        load_run(base)


def test_each_engine_pairs_with_its_own_baseline(tmp_path, pair):
    """Runs of the vLLM engine carry `engine: vllm`: they are their own model in a report, so its
    massive run is compared with its baseline, and a cross-engine comparison is an explicit --baseline."""
    engine = {}
    for name, spec in (
        ("base", {"ablate": "none", "engine": "vllm"}),
        ("cand", {"ablate": "massive", "engine": "vllm"}),
    ):
        run = load_run(pair[0] if name == "base" else pair[1])
        engine[name] = write_run(tmp_path / f"vllm_{name}", {t: list(s.scores) for t, s in run.tasks.items()}, spec)
    report = build_report([load_run(p) for p in (*pair, engine["base"], engine["cand"])], iterations=200)
    assert [(run.model, run.label) for run, _ in report.rows] == [
        ("smollm2-135m", "baseline"),
        ("smollm2-135m", "ablate=massive"),
        ("smollm2-135m (vllm)", "baseline"),
        ("smollm2-135m (vllm)", "ablate=massive"),
    ]
    by_model = {run.model: comparison for run, comparison in report.rows if not run.is_baseline}
    assert by_model["smollm2-135m (vllm)"].baseline.model == "smollm2-135m (vllm)"
    assert by_model["smollm2-135m"].baseline.model == "smollm2-135m"
    assert [e.value for e in by_model["smollm2-135m (vllm)"].tasks.values()] == [
        e.value for e in by_model["smollm2-135m"].tasks.values()
    ]
    across = build_report([load_run(engine["cand"])], baseline=load_run(pair[1]), iterations=200)
    assert [(run.model, run.label) for run, _ in across.rows] == [
        ("smollm2-135m", "ablate=massive"),
        ("smollm2-135m (vllm)", "ablate=massive"),
    ]
    assert all(e.value == 0 for e in across.rows[1][1].tasks.values())  # the same scores on both engines


def test_runs_split_over_several_lm_eval_calls_are_grouped(tmp_path, pair, capsys):
    """One lm_eval call per task gives one folder per task; report and gate put them together."""
    whole = run_gate(pair[0], pair[1], "contextual=2,parametric=2")
    parts = {}
    for role, folder, spec in (("base", pair[0], None), ("cand", pair[1], {"ablate": "massive"})):
        run = load_run(folder)
        for task in run.tasks:
            parts[(role, task)] = write_run(tmp_path / f"{role}_{task}", {task: list(run.tasks[task].scores)}, spec)
    bases = [parts[("base", t)] for t in ("passkey_1k", "city_facts")]
    cands = [parts[("cand", t)] for t in ("passkey_1k", "city_facts")]
    split = run_gate(bases, cands, "contextual=2,parametric=2")
    assert split.code == whole.code == FAIL
    assert [c.drop for c in split.checks] == [c.drop for c in whole.checks]
    report = build_report([load_run(p) for p in bases + cands], iterations=500)
    assert [run.label for run, _ in report.rows] == ["baseline", "ablate=massive"]
    assert set(report.rows[1][0].tasks) == {"passkey_1k", "city_facts"}
    assert (
        main(["gate", "--baseline", *map(str, bases), "--candidate", *map(str, cands), "--max-drop", "contextual=2"])
        == 1
    )
    mixed = run_gate([bases[0], cands[1]], cands, "contextual=2")
    assert mixed.code == UNUSABLE and "the baseline folders hold 2 different runs" in mixed.reason
    with pytest.raises(QKAblateError, match="are both smollm2-135m / baseline and both have passkey_1k"):
        build_report([load_run(p) for p in (bases[0], pair[0])])


def test_help_of_every_command():
    for argv in (["--help"], ["report", "--help"], ["gate", "--help"], ["profile", "--help"], ["sweep", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0


# ----------------------------------------------------------------------------- no-signal flag


def statements(labels: list[int], picks: list[int]) -> dict[str, list]:
    """Multiple-choice sample fields of a true/false task: the chosen choice gets the higher log-likelihood."""
    records = [
        {"target": label, "filtered_resps": [[-1.0 if pick == c else -2.0, pick == c] for c in (0, 1)]}
        for label, pick in zip(labels, picks)
    ]
    for record in records[::2]:  # the stock lm_eval CLI writes them as text: '1', ['-1.0', 'True']
        record["target"] = str(record["target"])
        record["filtered_resps"] = [[str(x) for x in pair] for pair in record["filtered_resps"]]
    return {"scores": [float(label == pick) for label, pick in zip(labels, picks)], "records": records}


@pytest.fixture
def planted(tmp_path):
    """A baseline answering "False" to every one of 100 balanced statements (50%), beside a good
    task (90% by 90 right generations) and passkey answers; and a massive-destroyed run."""
    labels = [i % 2 for i in range(100)]
    constant = statements(labels, [1] * 100)
    good = statements(labels, [label if i % 10 else 1 - label for i, label in enumerate(labels)])
    keys = [{"target": str(10000 + i), "filtered_resps": [f" {10000 + i}." if i % 5 else " 12345"]} for i in range(100)]
    scores = {
        "city_facts_tf": constant["scores"],
        "imdb": good["scores"],
        "passkey_1k": [float(i % 5 > 0) for i in range(100)],
    }
    records = {"city_facts_tf": constant["records"], "imdb": good["records"], "passkey_1k": keys}
    base = write_run(tmp_path / "base", scores, records=records, choices={"city_facts_tf": ["True", "False"]})
    cand = write_run(tmp_path / "cand", {t: [0.0] * 100 for t in scores}, {"ablate": "massive"})
    return base, cand


def test_a_planted_constant_answer_run_is_flagged_and_a_good_one_is_not(planted):
    run = load_run(planted[0])
    assert run.tasks["city_facts_tf"].answers[:2] == (("false", ("true",)), ("false", ("false",)))
    report = build_report([run, load_run(planted[1])], iterations=200)
    signal = {s.task: s for s in report.signals}
    tf = signal["city_facts_tf"]
    assert tf.flagged and tf.top_answer == "false" and tf.top_share == 1.0 and tf.constant_accuracy == 0.5
    assert tf.p_constant == 1.0 and tf.p_chance == pytest.approx(0.5397946186935895)  # P(X >= 50), X ~ B(100, 1/2)
    assert not signal["imdb"].flagged and signal["imdb"].p_chance < 1e-15  # 90 of 100 against one half
    assert not signal["passkey_1k"].flagged and signal["passkey_1k"].top_share == 0.2  # " 12345" 20 times
    assert [s.task for s in report.signals if s.flagged] == ["city_facts_tf"]
    md = to_markdown(report)
    assert md.splitlines()[0].startswith("| model | intervention | imdb | passkey_1k | city_facts_tf † | contextual |")
    note = next(line for line in md.splitlines() if line.startswith("† city_facts_tf"))
    assert "not distinguishable from chance (50.0%, one-sided binomial p = 0.54)" in note
    assert 'always answering "false" (100% of its answers; that constant would score 50.0%, sign test p = 1)' in note
    assert "it is left out of the parametric mean and the interaction (--keep-no-signal counts it)" in note
    rows = list(__import__("csv").DictReader(to_csv(report).splitlines()))
    assert [row["no_signal"] for row in rows] == ["city_facts_tf", "city_facts_tf"]
    assert [row["parametric"] for row in rows] == ["", ""]  # its only parametric task carries no signal
    assert all(cmp.left_out == ("city_facts_tf",) and cmp.interaction is None for _, cmp in report.rows)
    page = to_html(report)
    assert 'data-name="city_facts_tf">city_facts_tf †</th>' in page and "<p>† city_facts_tf" in page
    kept = build_report([run, load_run(planted[1])], iterations=200, keep_no_signal=True)
    assert "counted in the parametric mean all the same (--keep-no-signal)" in to_markdown(kept)
    assert all(cmp.left_out == () and "parametric" in cmp.means for _, cmp in kept.rows)


def test_a_task_at_zero_or_at_its_declared_chance_is_flagged_without_answers(tmp_path):
    """Old samples hold no answers: only the test against chance runs, from the catalogue or the YAML."""
    scores = {
        "niah_1k": [0.0] * 30,
        "passkey_1k": [1.0] * 30,
        "my_mcq": [float(i % 4 == 0) for i in range(40)],
        "my_facts": [0.0] * 20,
    }
    run = load_run(write_run(tmp_path / "a", scores, metadata={"my_mcq": {"chance": 0.25}}))
    assert run.chances == {"my_mcq": 0.25} and run.tasks["niah_1k"].answers == (None,) * 30
    signal = {s.task: s for s in build_report([run], iterations=100).signals}
    assert signal["niah_1k"].flagged and signal["niah_1k"].p_chance == 1.0 and signal["niah_1k"].top_share is None
    assert not signal["passkey_1k"].flagged
    assert signal["my_mcq"].flagged and signal["my_mcq"].chance == 0.25
    assert not signal["my_facts"].flagged and signal["my_facts"].p_chance is None  # no chance known: no test


@pytest.mark.parametrize("chance", ["high", 1.5, -0.1, True])
def test_a_bad_declared_chance_is_one_line(tmp_path, chance):
    run = write_run(tmp_path / "a", {"my_mcq": [1.0, 0.0]}, metadata={"my_mcq": {"chance": chance}})
    with pytest.raises(QKAblateError, match=r"the chance level of my_mcq must be a number from 0 to 1, got"):
        load_run(run)
    assert main(["report", str(run)]) == 2


def test_binomial_tail_is_exact():
    from qk_ablate.stats.baseline_signal import binomial_tail

    assert binomial_tail(0, 10, 0.3) == 1.0 and binomial_tail(11, 10, 0.3) == 0.0
    assert binomial_tail(10, 10, 0.5) == pytest.approx(0.5**10)
    assert binomial_tail(2, 3, 0.5) == pytest.approx(0.5)
    assert binomial_tail(1, 5, 0.0) == 0.0 and binomial_tail(5, 5, 1.0) == 1.0


def test_a_multiple_choice_task_without_a_declared_chance_is_tested_against_one_over_its_choices(tmp_path):
    """A user's true/false task whose YAML `metadata:` dropped `chance` (lm-eval replaces it whole):
    its samples hold two log-likelihoods per document, so its chance is 1/2, and a baseline at 52 of
    100 is flagged (the held-out sets of issue 25 sat there)."""
    n = 100
    scores = [float(i < 52) for i in range(n)]
    records = [{"filtered_resps": [[-1.0, False], [-2.0, False]], "target": 0 if s else 1} for s in scores]
    run = load_run(write_run(tmp_path / "a", {"my_tf": scores}, records={"my_tf": records}))
    assert run.chances == {} and run.tasks["my_tf"].choice_chance == 0.5
    (signal,) = build_report([run], iterations=100).signals
    assert signal.chance == 0.5 and signal.flagged and signal.p_chance > 0.3


def test_a_true_false_task_at_chance_and_a_constant_flip_are_footnoted_and_left_out(tmp_path):
    """Issue 25's two held-out cases: a true/false set answered at chance (varied answers, 50 of 100)
    and a yes/no set whose baseline always says "yes" (70%) and whose intervention always says "no"
    (30%): a -40 that measures nothing. Both are footnoted and left out of the parametric mean; the
    intervention's row marks both, while a contextual task with real signal counts as usual."""
    labels = [i % 2 for i in range(100)]
    at_chance = statements(labels, [(i // 2) % 2 for i in range(100)])  # right on exactly half, both answers used
    yes_no = [int(i % 10 >= 7) for i in range(100)]  # gold "Yes" (0) on 70 of 100
    says_yes, says_no = statements(yes_no, [0] * 100), statements(yes_no, [1] * 100)
    keys = [float(i % 10 > 0) for i in range(100)]
    choices = {"my_tf": ["True", "False"], "art_qa": ["Yes", "No"]}
    kinds = {"my_tf": "parametric", "art_qa": "parametric", "my_keys": "contextual"}
    base = write_run(
        tmp_path / "base",
        {"my_tf": at_chance["scores"], "art_qa": says_yes["scores"], "my_keys": keys},
        records={"my_tf": at_chance["records"], "art_qa": says_yes["records"]},
        choices=choices,
        declared=kinds,
    )
    cand = write_run(
        tmp_path / "cand",
        {
            "my_tf": at_chance["scores"],
            "art_qa": says_no["scores"],
            "my_keys": [float(i % 10 == 0) for i in range(100)],
        },
        {"ablate": "massive"},
        records={"my_tf": at_chance["records"], "art_qa": says_no["records"]},
        choices=choices,
        declared=kinds,
    )
    report = build_report([load_run(base), load_run(cand)], iterations=200)
    assert sorted(s.task for s in report.signals if s.flagged) == ["art_qa", "my_tf"]
    md = to_markdown(report)
    notes = [line for line in md.splitlines() if line.startswith("† ")]
    assert len(notes) == 2 and all("left out of the parametric mean and the interaction" in n for n in notes)
    assert any(n.startswith("† my_tf") and "chance (50.0%" in n for n in notes)
    assert any(n.startswith("† art_qa") and 'always answering "yes" (100% of its answers' in n for n in notes)
    for _, cmp in report.rows:
        assert cmp.left_out == ("art_qa", "my_tf") and "parametric" not in cmp.means and cmp.interaction is None
        assert 100 * cmp.means["contextual"].value in (90.0, 10.0)  # the task with signal still counts
    (row,) = [line for line in md.splitlines() if line.startswith("‡ ")]
    assert row.startswith("‡ smollm2-135m, ablate=massive: ")
    assert "art_qa 30.0% is not distinguishable from chance (50.0%" in row and 'always answering "no" (100%' in row
    assert "my_tf 50.0% is not distinguishable from chance (50.0%" in row
    assert "my_keys" not in row  # 10% of open answers is above a blind guess (0%)
    cells = next(line for line in md.splitlines() if "| ablate=massive |" in line)
    assert "| 30.0 ‡ (-40.0" in cells
    rows = list(__import__("csv").DictReader(to_csv(report).splitlines()))
    assert [r["row_no_signal"] for r in rows] == ["", "art_qa;my_tf"]


def test_version_and_the_help_a_newcomer_reads(capsys):
    """--version; gate's exit codes and sweep's YAML keys in their --help; profile's threshold as the code has it."""
    from qk_ablate import __version__

    for argv, expected in (
        (["--version"], [f"qk-ablate {__version__}"]),
        (["gate", "--help"], ["exit status: 0 every budget holds; 1 a budget is exceeded; 2 the runs could"]),
        (["sweep", "--help"], ["Config (YAML)::", "interventions:", "baseline_model:", "include_path:"]),
        (["profile", "--help"], ["M > lam x the head's mean"]),
        (["--help"], ["depth"]),
    ):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
        out = " ".join(capsys.readouterr().out.split())
        for text in expected:
            assert " ".join(text.split()) in out, (argv, text)
