"""The task catalogue is what tasks/ ships: every task YAML, every group and its members."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qk_ablate.catalogue import GROUPS, KINDS, parse_kinds, task_kind, tasks
from qk_ablate.errors import QKAblateError

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
