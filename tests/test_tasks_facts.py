"""city_facts / city_facts_tf: deterministic GeoNames selection, aliases, strict scoring, lm-eval."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import docs_digest as _digest

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data import city_facts as cf
from qk_ablate.task_data.scoring import alias_process_results, country_correct, normalize_name

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"


@pytest.fixture(scope="module")
def recall():
    return cf.build_recall_docs()


@pytest.fixture(scope="module")
def tf():
    return cf.build_tf_docs()


def test_pool_rules():
    pool = cf.city_pool()
    assert len(pool) >= 300
    by_name = {}
    for fact in pool:
        by_name.setdefault(normalize_name(fact.city), set()).add(fact.country_code)
    assert all(len(codes) == 1 for codes in by_name.values())
    assert max(Counter(f.country_code for f in pool).values()) <= cf.MAX_PER_COUNTRY
    assert not {f.country_code for f in pool} & cf.NON_SOVEREIGN
    names = {f.city for f in pool}
    assert not names & cf.HELD_OUT
    assert {"Mexico City", "Singapore", "Salvador", "Jerusalem", "Córdoba", "Valencia"}.isdisjoint(names)
    assert {"London", "Paris", "Moscow", "Cairo", "Berlin"} <= names
    populations = [f.population for f in pool]
    assert populations == sorted(populations, reverse=True)


def test_recall_docs(recall):
    assert len(recall) == cf.DEFAULT_NUM_DOCS == 200
    assert len({d["city"] for d in recall}) == 200
    assert len({d["country_code"] for d in recall}) >= 80
    doc = recall[0]
    assert doc["input"].startswith("Q: In which country is the city of Tokyo?\nA: Japan\n\n")
    assert doc["input"].endswith(f"Q: In which country is the city of {doc['city']}?\nA:")
    assert doc["input"].count("Q: ") == 4
    assert doc["aliases"][0] == doc["country"]
    # the set is the 200 most populous eligible cities, in a seeded order
    assert {d["city"] for d in recall} == {f.city for f in cf.city_pool()[:200]}


def test_determinism(recall, tf):
    assert _digest(cf.build_recall_docs()) == _digest(recall)
    assert _digest(cf.build_tf_docs()) == _digest(tf)
    other = cf.build_recall_docs(seed=1)
    assert _digest(other) != _digest(recall)
    assert {d["city"] for d in other} == {d["city"] for d in recall}
    assert _digest(cf.build_tf_docs(seed=1)) != _digest(tf)
    assert {d["city"] for d in cf.build_recall_docs(num_docs=10)} == {f.city for f in cf.city_pool()[:10]}


def test_tf_docs_balanced_and_consistent(tf):
    assert len(tf) == 200
    assert sum(1 for d in tf if d["label"] == 0) == 100
    for k in range(0, 200, 2):  # any even prefix (lm-eval --limit) is balanced as well
        assert tf[k]["label"] + tf[k + 1]["label"] == 1
    assert [d["label"] for d in tf[:10]] != [0, 1] * 5  # the order within pairs is seeded
    assert [d["label"] for d in cf.build_tf_docs(num_docs=5)].count(0) == 3
    for doc in tf:
        assert doc["input"].endswith(
            f"Statement: {doc['city']} is a city in {doc['claimed_country']}.\nTrue or false? Answer:"
        )
        assert (doc["claimed_country"] == doc["country"]) == (doc["label"] == 0)
    prefix = cf.tf_prefix()
    assert prefix.count(" True\n\n") == 2 and prefix.count(" False\n\n") == 2
    assert "Tokyo is a city in Japan.\nTrue or false? Answer: True" in prefix
    with pytest.raises(QKAblateError):
        cf.build_tf_docs(num_docs=10_000)


def test_aliases():
    assert {"United States", "USA", "United States of America"} <= set(cf.country_aliases("US"))
    assert {"United Kingdom", "UK"} <= set(cf.country_aliases("GB"))
    assert "Russian Federation" in cf.country_aliases("RU")
    assert "England" in cf.lookup_city("London").aliases
    assert "Scotland" in cf.lookup_city("Glasgow").aliases
    assert "England" not in cf.lookup_city("Glasgow").aliases


US = cf.country_aliases("US")
JP = ("Japan",)


@pytest.mark.parametrize(
    ("output", "aliases", "expected"),
    [
        (" Japan", JP, True),
        ("Japan.", JP, True),
        (" japan\n\nQ: In which country is the city of Osaka?", JP, True),
        (" Japan. It is in East Asia.", JP, True),
        (" Not Japan", JP, False),
        (" Japan or China", JP, False),
        (" Tokyo, Japan", JP, False),
        (" China", JP, False),
        ("", JP, False),
        (" United States", US, True),
        (" USA", US, True),
        (" U.S.A.", US, True),
        (" the United States of America.", US, True),
        (" US", US, True),
        (" United Kingdom", US, False),
        (" Côte d’Ivoire", cf.country_aliases("CI"), True),
        (" Cote d'Ivoire", cf.country_aliases("CI"), True),
        (" Ivory Coast", cf.country_aliases("CI"), True),
        (" Netherlands", cf.country_aliases("NL"), True),
        (" Russian Federation", cf.country_aliases("RU"), True),
        (" Niger", cf.country_aliases("NG"), False),
        (" Congo", cf.country_aliases("CD"), False),
        (" DR Congo", cf.country_aliases("CD"), True),
        (" Korea", cf.country_aliases("KP"), False),
        (" England", cf.lookup_city("London").aliases, True),
        (" England", cf.lookup_city("Glasgow").aliases, False),
        (" UK", cf.lookup_city("Glasgow").aliases, True),
    ],
)
def test_country_scoring(output, aliases, expected):
    assert country_correct(output, aliases) is expected


def test_process_results(recall):
    doc = recall[0]
    assert alias_process_results(doc, [f" {doc['country']}"]) == {"acc": 1.0}
    assert alias_process_results(doc, [" Atlantis"]) == {"acc": 0.0}


def test_task_manager_loads_facts_and_group():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"num_docs": 10, "task_seed": 2})
    loaded = tm.load(["qk_parametric"])
    assert set(loaded["tasks"]) == {"city_facts", "city_facts_tf", "country_capital", "country_continent"}
    assert "qk_parametric" in loaded["groups"]
    recall_task, tf_task = loaded["tasks"]["city_facts"], loaded["tasks"]["city_facts_tf"]
    docs = list(recall_task.test_docs())
    assert len(docs) == 10
    assert [d["city"] for d in docs] == [d["city"] for d in cf.build_recall_docs(10, seed=2)]
    assert recall_task.config.output_type == "generate_until"
    assert tf_task.config.output_type == "multiple_choice"
    tf_doc = next(iter(tf_task.test_docs()))
    assert tf_task.doc_to_choice(tf_doc) == ["True", "False"]
    assert tf_task.doc_to_target(tf_doc) == tf_doc["label"]


@pytest.mark.parametrize(
    ("output", "verdict"),
    [
        (" True", True),
        (" True.", True),
        (" yes, it is", True),
        (" Correct", True),
        (" False", False),
        (" No, that is not correct.", False),
        (" Not true", False),
        (" Incorrect.", False),
        (" no", False),
        (" It is true", None),
        (" Maybe", None),
        ("", None),
        (" Truely", None),
    ],
)
def test_read_verdict_never_skips_a_negation(output, verdict):
    from qk_ablate.task_data.scoring import read_verdict

    assert read_verdict(output) is verdict


def test_generated_true_false_task():
    from lm_eval.tasks import TaskManager

    from qk_ablate.task_data.city_facts import city_facts_tf_gen_process_results as score

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"num_docs": 4})
    task = tm.load(["city_facts_tf_gen"])["tasks"]["city_facts_tf_gen"]
    docs = list(task.test_docs())
    assert [d["label"] for d in docs] == [d["label"] for d in cf.build_tf_docs(4)]
    true_doc = next(d for d in docs if d["label"] == 0)
    false_doc = next(d for d in docs if d["label"] == 1)
    assert task.doc_to_target(true_doc) == "True"
    assert score(true_doc, [" True"]) == {"acc": 1.0}
    assert score(true_doc, [" No, that is not correct."]) == {"acc": 0.0}
    assert score(false_doc, [" No, that is not correct."]) == {"acc": 1.0}
    assert score(false_doc, [" It is true"]) == score(true_doc, [" It is true"]) == {"acc": 0.0}


# ----------------------------------------------------------------------------- format vs fact

JP_DOC = {"aliases": list(cf.country_aliases("JP"))}


@pytest.mark.parametrize(
    ("output", "acc", "well_formed"),
    [
        (" Japan", 1.0, 1.0),
        (" Japan. It is in East Asia.", 1.0, 1.0),
        (" China", 0.0, 1.0),  # a country, the wrong one: the format kept, the fact lost
        (" the Netherlands.", 0.0, 1.0),
        (" USA", 0.0, 1.0),  # an alias of another country
        (" Puerto Rico", 0.0, 1.0),  # a GeoNames country though not sovereign
        (" England", 0.0, 1.0),
        (" Africa", 0.0, 0.0),  # a continent
        (" Tokyo", 0.0, 0.0),  # a city
        (" Czech", 0.0, 0.0),
        (" Japan or China", 0.0, 0.0),
        ("", 0.0, 0.0),
    ],
)
def test_recall_answers_are_scored_twice(output, acc, well_formed):
    assert cf.city_facts_process_results(JP_DOC, [output]) == {"acc": acc, "well_formed": well_formed}


def test_a_right_answer_is_always_well_formed(recall):
    for doc in recall:
        for alias in doc["aliases"]:
            assert cf.city_facts_process_results(doc, [f" {alias}."]) == {"acc": 1.0, "well_formed": 1.0}


def test_zero_shot_docs_are_the_same_questions_without_examples(recall):
    zero = cf.build_recall_docs(fewshot=False)
    assert [{**d, "input": None} for d in zero] == [{**d, "input": None} for d in recall]
    for few, doc in zip(recall, zero):
        assert doc["input"] == cf.RECALL_TEMPLATE.format(city=doc["city"])  # the question alone
        assert few["input"] == cf.recall_prefix() + doc["input"]
    via_metadata = cf.city_facts_0shot_dataset(num_docs=7, task_seed=3)["test"].to_list()
    assert _digest(via_metadata) == _digest(cf.build_recall_docs(7, seed=3, fewshot=False))


def test_committed_runs_keep_their_prompts():
    """The few-shot prompts are what the committed paper grid evaluated, so old runs still pair."""
    from qk_ablate.stats.runs import read_samples
    from qk_ablate.task_data import country_capital as cc

    root = TASKS_DIR.parent / "results" / "paper" / "smollm2-135m" / "baseline"
    for name, docs in (("city_facts", cf.build_recall_docs()), ("country_capital", cc.build_docs())):
        (path,) = root.rglob(f"samples_{name}_*.jsonl.gz")  # committed samples are gzipped
        records = [json.loads(line) for line in read_samples(path) if line.strip()]
        assert len(records) == 100
        assert all(r["doc"]["input"] == docs[r["doc_id"]]["input"] for r in records)


class ConstantLM:
    """An lm-eval model that answers every question with the same words (built lazily: lm-eval's LM)."""

    def __new__(cls, answer: str):
        from lm_eval.api.model import LM

        class Constant(LM):
            def loglikelihood(self, requests):
                return [(-1.0, False)] * len(requests)

            def loglikelihood_rolling(self, requests):
                return [-1.0] * len(requests)

            def generate_until(self, requests):
                return [answer] * len(requests)

        return Constant()


def test_lm_eval_samples_hold_both_scores_and_a_constant_answerer_is_flagged(tmp_path):
    """Through lm-eval itself: each recall document's sample holds `acc` and `well_formed`, the
    results hold both means, `acc` stays the primary metric, and the report flags the constant."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    from qk_ablate.stats.report import build_report, to_markdown
    from qk_ablate.stats.runs import load_run

    names = [
        "city_facts",
        "city_facts_0shot",
        "country_capital",
        "country_capital_0shot",
        "country_continent",
        "country_continent_0shot",
    ]
    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"num_docs": 20})
    results = simple_evaluate(model=ConstantLM(" China"), tasks=names, task_manager=tm, log_samples=True)
    for name in names:
        samples = results["samples"][name]
        assert len(samples) == 20
        assert all(s["metrics"] == ["acc", "well_formed"] and {"acc", "well_formed"} <= set(s) for s in samples)
        assert {"acc,none", "well_formed,none"} <= set(results["results"][name])
    wf = {name: results["results"][name]["well_formed,none"] for name in names}
    assert wf["city_facts"] == wf["city_facts_0shot"] == 1.0  # a country, every time
    assert wf["country_capital"] == wf["country_continent"] == 0.0  # a country is no city, no continent
    tracker = EvaluationTracker(output_path=str(tmp_path))
    tracker.save_results_aggregated(results=results, samples=results["samples"])
    for name in names:
        tracker.save_results_samples(task_name=name, samples=results["samples"][name])
    run = load_run(tmp_path)
    assert run.tasks["city_facts"].metric == "acc"
    assert run.tasks["city_facts"].mean == pytest.approx(results["results"]["city_facts"]["acc,none"])
    assert {a[0] for a in run.tasks["city_facts"].answers} == {"china"}
    report = build_report([run], iterations=100)
    flagged = {s.task for s in report.signals if s.flagged}
    assert {"city_facts", "city_facts_0shot", "country_capital", "country_continent"} <= flagged
    assert "| city_facts † |" in to_markdown(report)
