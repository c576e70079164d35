"""The task catalogue is what tasks/ ships: every task YAML, every group and its members."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data.catalogue import GROUPS, KINDS, check_chance, parse_kinds, task_chance, task_kind, tasks

TASKS = Path(__file__).resolve().parents[1] / "tasks"


def _yamls() -> list[dict]:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return [yaml.load(path.read_text(), Loader=Loader) for path in sorted(TASKS.rglob("*.yaml"))]


def test_every_shipped_task_yaml_is_in_the_catalogue_and_back():
    shipped = {doc["task"] for doc in _yamls() if "task" in doc and isinstance(doc["task"], str)}
    assert shipped == set(tasks(shipped_only=True))
    assert set(tasks()) - shipped == {"gsm8k"}  # lm-eval's own, run with qk_ablated


def test_group_yamls_are_the_catalogue_groups():
    groups = {doc["group"]: doc["task"] for doc in _yamls() if "group" in doc}
    assert groups == GROUPS


def test_kinds():
    assert task_kind("passkey_128k") == task_kind("niah_essay_4k") == task_kind("imdb") == "contextual"
    assert task_kind("country_continent") == task_kind("city_facts_tf") == "parametric"
    assert task_kind("my_facts") is None
    assert task_kind("my_facts", declared={"my_facts": "parametric"}) == "parametric"
    assert task_kind("my_facts", {"my_facts": "contextual"}, {"my_facts": "parametric"}) == "contextual"
    assert task_kind("city_facts", declared={"city_facts": "contextual"}) == "parametric"  # a run-wide --metadata kind
    assert all(task_kind(t) in KINDS for t in tasks())


def test_parse_kinds():
    assert parse_kinds("a=contextual, b=parametric") == {"a": "contextual", "b": "parametric"}
    assert parse_kinds("") == {}
    for bad in ("a", "a=both", "=contextual"):
        with pytest.raises(QKAblateError, match="must be TASK=contextual or TASK=parametric"):
            parse_kinds(bad)


def test_chance_levels():
    assert task_chance("imdb") == task_chance("city_facts_tf") == task_chance("city_facts_tf_gen") == 0.5
    assert task_chance("city_facts") == task_chance("passkey_128k") == task_chance("country_capital_0shot") == 0.0
    assert task_chance("country_continent") == pytest.approx(1 / 6)
    assert task_chance("my_mcq") is None and task_chance("my_mcq", {"my_mcq": 0.25}) == 0.25
    assert task_chance("imdb", {"imdb": 0.9}) == 0.5  # a run-wide --metadata chance never moves ours
    assert all(0.0 <= task_chance(t) <= 0.5 for t in tasks())
    assert {"city_facts_0shot", "country_capital_0shot", "country_continent_0shot"} <= set(tasks(shipped_only=True))
    assert all(task_kind(t) == "parametric" for t in ("city_facts_0shot", "country_capital_0shot"))
    assert not {"city_facts_0shot"} & set(GROUPS["qk_parametric"])  # the groups (and their means) are unchanged
    assert check_chance("t", "0.25", "here") == 0.25
    with pytest.raises(QKAblateError, match=r"^here: the chance level of t must be a number from 0 to 1, got 2$"):
        check_chance("t", 2, "here")
