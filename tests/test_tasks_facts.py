"""city_facts / city_facts_tf: deterministic GeoNames selection, aliases, strict scoring, lm-eval."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import docs_digest as _digest

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data import city_facts as cf
from qk_ablate.task_data.scoring import alias_process_results
from qk_ablate.task_data.scoring import country_correct, normalize_name

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
        assert doc["input"].endswith(f"Statement: {doc['city']} is a city in {doc['claimed_country']}.\nTrue or false? Answer:")
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
        (" True", True), (" True.", True), (" yes, it is", True), (" Correct", True),
        (" False", False), (" No, that is not correct.", False), (" Not true", False),
        (" Incorrect.", False), (" no", False),
        (" It is true", None), (" Maybe", None), ("", None), (" Truely", None),
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
