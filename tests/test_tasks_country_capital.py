"""country_capital: deterministic GeoNames selection, held-out few-shot, strict scoring, lm-eval."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import docs_digest as _digest

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data import country_capital as cc
from qk_ablate.task_data import country_continent as continent
from qk_ablate.task_data.city_facts import NON_SOVEREIGN
from qk_ablate.task_data.scoring import alias_process_results, country_correct, normalize_name

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"


@pytest.fixture(scope="module")
def docs():
    return cc.build_docs()


def test_pool_rules():
    pool = cc.country_pool()
    assert len(pool) >= cc.DEFAULT_NUM_DOCS
    assert len(set(pool)) == len(pool)
    assert not set(pool) & NON_SOVEREIGN
    assert not set(pool) & cc.UNCLEAR_CAPITAL
    assert not set(pool) & set(cc.FEWSHOT)
    # the question never gives the answer away
    assert {"SG", "DJ", "LU", "MC", "SM", "KW", "MX", "GT", "PA", "VA"}.isdisjoint(pool)
    assert {"FR", "DE", "US", "CN", "IN", "UA", "GB"} <= set(pool)
    for code in pool:
        record = cc._countries()[code]
        assert record["capital"].strip()
        assert normalize_name(record["name"]) not in normalize_name(record["capital"])
    populations = [cc._countries()[c]["population"] for c in pool]
    assert populations == sorted(populations, reverse=True)


def test_docs(docs):
    assert len(docs) == cc.DEFAULT_NUM_DOCS == 150
    assert len({d["country_code"] for d in docs}) == 150
    assert len({d["country"] for d in docs}) == 150
    assert {d["country_code"] for d in docs} == set(cc.country_pool()[:150])
    doc = docs[0]
    assert doc["input"].startswith(
        "Q: What is the capital of Japan?\nA: Tokyo\n\nQ: What is the capital of Canada?\nA: Ottawa\n\n"
        "Q: What is the capital of Kenya?\nA: Nairobi\n\n"
    )
    for doc in docs:
        assert doc["input"].endswith(f"Q: What is the capital of {doc['country']}?\nA:")
        assert doc["input"].count("Q: ") == 4
        assert doc["aliases"][0] == doc["capital"]
    france = next(d for d in docs if d["country_code"] == "FR")
    assert (france["country"], france["capital"]) == ("France", "Paris")


def test_fewshot_held_out(docs):
    shots = {cc._countries()[code]["name"] for code in cc.FEWSHOT}
    shot_capitals = {cc._countries()[code]["capital"] for code in cc.FEWSHOT}
    assert shots == {"Japan", "Canada", "Kenya"}
    everything = cc.build_docs(num_docs=10_000)
    assert not shots & {d["country"] for d in everything}
    assert not shot_capitals & {d["capital"] for d in everything}


def test_determinism(docs):
    assert _digest(cc.build_docs()) == _digest(docs)
    other = cc.build_docs(seed=1)
    assert _digest(other) != _digest(docs)
    assert {d["country"] for d in other} == {d["country"] for d in docs}
    assert len(cc.build_docs(num_docs=10_000)) == len(cc.country_pool())  # all eligible when fewer
    assert {d["country_code"] for d in cc.build_docs(num_docs=10)} == set(cc.country_pool()[:10])
    via_metadata = cc.country_capital_dataset(num_docs=12, task_seed=3)["test"].to_list()
    assert _digest(via_metadata) == _digest(cc.build_docs(12, seed=3))
    with pytest.raises(QKAblateError):
        cc.build_docs(num_docs=0)


FR = cc.capital_aliases("FR")
UA = cc.capital_aliases("UA")
US = cc.capital_aliases("US")
IN = cc.capital_aliases("IN")
MM = cc.capital_aliases("MM")


@pytest.mark.parametrize(
    ("output", "aliases", "expected"),
    [
        (" Paris", FR, True),
        ("Paris.", FR, True),
        (" paris\n\nQ: What is the capital of Spain?", FR, True),
        (" Paris. It is on the Seine.", FR, True),
        (" Not Paris", FR, False),
        (" Paris, France", FR, False),
        (" Paris or Lyon", FR, False),
        (" Lyon", FR, False),
        ("", FR, False),
        (" Kyiv", UA, True),
        (" Kiev", UA, True),
        (" Moscow", UA, False),
        (" Washington", US, True),
        (" Washington, D.C.", US, True),
        (" Washington DC", US, True),
        (" New York", US, False),
        (" New Delhi", IN, True),
        (" Delhi", IN, False),
        (" Naypyidaw", MM, True),
        (" Nay Pyi Taw", MM, True),
        (" Yangon", MM, False),
        (" Brasília", cc.capital_aliases("BR"), True),
        (" Port-of-Spain", cc.capital_aliases("TT"), True),
        (" Ndjamena", cc.capital_aliases("TD"), True),
    ],
)
def test_capital_scoring(output, aliases, expected):
    assert country_correct(output, aliases) is expected


def test_process_results(docs):
    doc = docs[0]
    assert alias_process_results(doc, [f" {doc['capital']}"]) == {"acc": 1.0}
    assert alias_process_results(doc, [" Atlantis"]) == {"acc": 0.0}


def test_task_manager_loads_country_capital():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"num_docs": 10, "task_seed": 2})
    task = tm.load(["country_capital"])["tasks"]["country_capital"]
    assert task.config.output_type == "generate_until"
    task_docs = list(task.test_docs())
    assert [d["country"] for d in task_docs] == [d["country"] for d in cc.build_docs(10, seed=2)]
    doc = task_docs[0]
    assert task.doc_to_text(doc) == doc["input"]
    assert task.doc_to_target(doc) == doc["capital"]
    assert task.config.generation_kwargs["until"] == ["\n"]
    assert task.process_results(doc, [f" {doc['capital']}."]) == {"acc": 1.0, "well_formed": 1.0}


# ----------------------------------------------------------------------------- format vs fact


@pytest.mark.parametrize(
    ("output", "acc", "well_formed"),
    [
        (" Paris", 1.0, 1.0),
        (" Paris. It is on the Seine.", 1.0, 1.0),
        (" Lyon", 0.0, 1.0),  # a real city, the wrong one: the format kept, the fact lost
        (" Berlin", 0.0, 1.0),  # another country's capital
        (" Kiev", 0.0, 1.0),  # a capital's spelling variant
        (" France", 0.0, 0.0),  # a country is not a city
        (" Djibani", 0.0, 0.0),  # invented (as the paper grid's massive cell answered)
        (" Paris, France", 0.0, 0.0),
        (" Paris or Lyon", 0.0, 0.0),
        ("", 0.0, 0.0),
    ],
)
def test_capital_answers_are_scored_twice(output, acc, well_formed):
    doc = next(d for d in cc.build_docs() if d["country_code"] == "FR")
    assert cc.country_capital_process_results(doc, [output]) == {"acc": acc, "well_formed": well_formed}


def test_a_right_answer_is_always_well_formed(docs):
    for doc in docs:
        for alias in doc["aliases"]:
            assert cc.country_capital_process_results(doc, [f" {alias}"]) == {"acc": 1.0, "well_formed": 1.0}
    for doc in continent.build_docs():
        for alias in doc["aliases"]:
            assert continent.country_continent_process_results(doc, [f" {alias}"]) == {"acc": 1.0, "well_formed": 1.0}


@pytest.mark.parametrize(
    ("output", "acc", "well_formed"),
    [
        (" Europe", 1.0, 1.0),
        (" Asia", 0.0, 1.0),
        (" Oceania", 0.0, 1.0),
        (" Eurasia", 0.0, 0.0),
        (" France", 0.0, 0.0),
        (" Europe or Asia", 0.0, 0.0),
        ("", 0.0, 0.0),
    ],
)
def test_continent_answers_are_scored_twice(output, acc, well_formed):
    doc = next(d for d in continent.build_docs() if d["country_code"] == "FR")
    assert continent.country_continent_process_results(doc, [output]) == {"acc": acc, "well_formed": well_formed}


@pytest.mark.parametrize("module", [cc, continent])
def test_zero_shot_docs_are_the_same_questions_without_examples(module):
    few, zero = module.build_docs(), module.build_docs(fewshot=False)
    assert [{**d, "input": None} for d in few] == [{**d, "input": None} for d in zero]
    head = few[0]["input"][: -len(zero[0]["input"])]
    assert head.count("Q: ") == 3 and head.endswith("\n\n")
    for f, z in zip(few, zero):
        assert f["input"] == head + z["input"]
        assert z["input"] == module.TEMPLATE.format(country=z["country"])  # the question alone


def test_task_manager_loads_the_zero_shot_tasks():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"num_docs": 5})
    loaded = tm.load(["country_capital_0shot", "country_continent_0shot"])["tasks"]
    for name, module in (("country_capital_0shot", cc), ("country_continent_0shot", continent)):
        task = loaded[name]
        task_docs = list(task.test_docs())
        assert [task.doc_to_text(d) for d in task_docs] == [d["input"] for d in module.build_docs(5, fewshot=False)]
        assert all(task.doc_to_text(d).count("A:") == 1 for d in task_docs)  # no examples
        assert set(task.aggregation()) == {"acc", "well_formed"}
        assert task.config.generation_kwargs["until"] == ["\n\n"]  # an answer may start on a new line
        doc = task_docs[0]
        assert task.process_results(doc, [f" {doc['aliases'][0]}"]) == {"acc": 1.0, "well_formed": 1.0}
