"""niah_{len} and niah_multikey_{len}: exact lengths in two different tokenizers, determinism,
needle placement, distinct distractors, strict scoring, and the lm-eval wiring."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import docs_digest as _digest
from conftest import token_count as _count

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data import niah
from qk_ablate.task_data.niah import INTRO, LENGTHS, build_niah_docs, needle, niah_correct, question

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"
GEN_BUDGET = 12


def test_toy_tokenizer_differs(smol, toy):
    text = "One of the special magic numbers for brave-lantern is: 1234567."
    assert _count(toy, text) != _count(smol, text)


@pytest.mark.parametrize("distractors", [0, 3])
def test_layout_needles_once_and_distinct(smol, distractors):
    docs = build_niah_docs(smol, 2048, num_docs=20, num_distractors=distractors)
    for doc in docs:
        text, key, value = doc["input"], doc["key"], doc["value"]
        assert re.fullmatch(r"[1-9]\d{6}", value)
        assert re.fullmatch(r"[a-z]+-[a-z]+", key)
        assert text.startswith(INTRO + "\n")
        assert text.endswith("\n" + question(key))
        assert text.count(needle(key, value)) == 1
        assert text.count(value) == 1
        assert text.count(key) == 3  # the needle and twice in the question
        assert "The grass is green. The sky is blue." in text
        assert len(doc["distractors"]) == distractors
        keys = [key] + [d["key"] for d in doc["distractors"]]
        values = [value] + [d["value"] for d in doc["distractors"]]
        assert len(set(keys)) == len(keys) and len(set(values)) == len(values)
        for other in doc["distractors"]:
            assert text.count(needle(other["key"], other["value"])) == 1
            assert text.count(other["key"]) == 1 and text.count(other["value"]) == 1
        assert text.count("special magic numbers for") == 1 + distractors  # only the needles
        # needles sit at sentence starts: preceded by the intro line or a sentence end
        for match in re.finditer(r"One of the special magic", text):
            assert text[match.start() - 1] in " \n"
            assert text[: match.start()].rstrip().endswith((".", INTRO))


def test_word_lists_keep_keys_apart():
    assert len(set(niah.NOUNS)) == len(niah.NOUNS) and len(set(niah.ADJECTIVES)) == len(niah.ADJECTIVES)
    for a in niah.NOUNS:
        for b in niah.NOUNS:
            assert a == b or not b.startswith(a)


def test_same_seed_same_docs_other_seed_other_docs(smol, toy):
    for distractors in (0, 3):
        a = build_niah_docs(smol, 2048, num_docs=8, seed=0, num_distractors=distractors)
        b = build_niah_docs(smol, 2048, num_docs=8, seed=0, num_distractors=distractors)
        c = build_niah_docs(smol, 2048, num_docs=8, seed=1, num_distractors=distractors)
        assert _digest(a) == _digest(b)
        assert _digest(a) != _digest(c)
        assert [d["value"] for d in a] != [d["value"] for d in c]
        t = build_niah_docs(toy, 2048, num_docs=8, seed=0, num_distractors=distractors)
        assert [(d["key"], d["value"]) for d in t] == [(d["key"], d["value"]) for d in a]
    single = build_niah_docs(smol, 2048, num_docs=8)
    multi = build_niah_docs(smol, 2048, num_docs=8, num_distractors=3)
    assert [d["value"] for d in single] != [d["value"] for d in multi]


def test_default_docs_and_depth_spread(smol):
    docs = build_niah_docs(smol, 1024)
    assert len(docs) == 100
    depths = [d["depth"] for d in docs]
    assert all(0.0 <= x <= 1.0 for x in depths)
    deciles = [sum(1 for x in depths if k / 10 <= x < (k + 1) / 10 or (k == 9 and x == 1.0)) for k in range(10)]
    assert all(7 <= n <= 13 for n in deciles), deciles
    assert len({min(int(x * 10), 9) for x in depths[:10]}) >= 7  # --limit prefixes are spread too
    assert len({d["value"] for d in docs}) >= 98
    assert len({d["key"] for d in docs}) >= 90


def test_bad_settings_are_readable_errors(smol):
    with pytest.raises(QKAblateError):
        build_niah_docs(smol, 64, num_docs=1)  # the fixed text alone is longer
    with pytest.raises(QKAblateError):
        build_niah_docs(smol, 1024, num_docs=0)
    with pytest.raises(QKAblateError):
        build_niah_docs(smol, 1024, num_docs=1, num_distractors=-1)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (" 4817263.", True),
        ("4817263", True),
        (" 4,817,263", True),
        ("\n4817263", True),
        (" 4817263 is the number", True),
        (" the number 42 is not it; 4817263.", True),  # the first 7-digit number counts
        (" 48172631", False),  # a longer number is not a hit
        (" 14817263", False),
        (" 481726", False),
        (" 481726 3", False),
        (" 4817264", False),
        (" -4817263", False),
        (" 4817263.5", False),
        (" 9517302 or 4817263", False),  # a distractor's value first: wrong
        (" 9517302", False),
        (" four million", False),
        ("", False),
    ],
)
def test_scoring(output, expected):
    assert niah_correct(output, "4817263") is expected
    assert niah_correct(output, 4817263) is expected


def test_first_magic_number():
    assert niah.first_magic_number("is 12 then 1,234,567.") == "1234567"
    assert niah.first_magic_number("12345678 and 123") is None


# --- lm-eval wiring -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task_manager(smol):
    from lm_eval.tasks import TaskManager

    return TaskManager(
        include_path=str(TASKS_DIR),
        include_defaults=False,
        metadata={"pretrained": "smollm2-135m", "num_docs": 4, "seed": 7},
    )


def test_task_manager_indexes_every_length(task_manager):
    names = set(task_manager.all_tasks)
    assert {f"niah_{n}" for n in LENGTHS} <= names
    assert {f"niah_multikey_{n}" for n in LENGTHS} <= names


@pytest.mark.parametrize(("task_name", "distractors"), [("niah_1k", 0), ("niah_multikey_1k", 3)])
def test_tasks_load_and_render(task_manager, smol, task_name, distractors):
    task = task_manager.load([task_name])["tasks"][task_name]
    docs = list(task.test_docs())
    assert len(docs) == 4  # num_docs from the run-time metadata
    expected = build_niah_docs(smol, 1024, num_docs=4, num_distractors=distractors)  # `seed` must not matter
    assert [d["value"] for d in docs] == [d["value"] for d in expected]
    assert [len(d["distractors"]) for d in docs] == [distractors] * 4
    assert task.config.generation_kwargs["max_gen_toks"] == GEN_BUDGET
    rendered = task.doc_to_text(docs[0])
    assert rendered == docs[0]["input"] and rendered.endswith(question(docs[0]["key"]))
    assert _count(smol, rendered) <= 1024 - GEN_BUDGET
    assert str(task.doc_to_target(docs[0])) == docs[0]["value"]
    assert niah.niah_process_results(docs[0], [f" {docs[0]['value']}."]) == {"acc": 1.0}
    assert niah.niah_process_results(docs[0], [" 1234567"]) == {"acc": float(docs[0]["value"] == "1234567")}
    if distractors:
        assert niah.niah_process_results(docs[0], [f" {docs[0]['distractors'][0]['value']}"]) == {"acc": 0.0}


def test_dataset_hook_settings(toy):
    data = niah.niah_dataset("1k", tokenizer=toy, num_docs=2, task_seed=3, version=1.0)
    assert len(data["test"]) == 2
    with pytest.raises(QKAblateError, match="num_docs"):
        niah.niah_dataset(1024, tokenizer=toy, num_docs="many")
