"""ctxqa_{len}: invented documents (nothing to recall), one question about exactly one of them,
strict scoring, and the lm-eval wiring. Lengths and seeds: test_tasks_lengths.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qk_ablate.task_data import ctxqa
from qk_ablate.task_data.ctxqa import INSTRUCTION, build_ctxqa_docs, ctxqa_correct

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"


@pytest.fixture(scope="module")
def docs(smol):
    return build_ctxqa_docs(smol, 2048, num_docs=24)


def test_layout_one_target_document_and_unique_answers(docs):
    for doc in docs:
        text = doc["input"]
        assert text.startswith(INSTRUCTION)
        assert text.endswith(f"Question: {doc['question']} Answer: {doc['answer_prefix']}")
        name = doc["name"]
        assert name in doc["question"]
        assert len(re.findall(rf"\b{name} is an? ", text)) == 1  # the target document, once
        assert text.count(doc["answer"]) == 1  # its answer nowhere else
        assert re.findall(r"Document (\d+):", text) == [str(i) for i in range(1, doc["num_documents"] + 1)]
        assert doc["attribute"] in ctxqa.ATTRIBUTES and doc["answer"] in text
        if doc["attribute"] == "year":
            assert doc["answer"] not in doc["distractor_answers"]
        else:
            assert len(set(doc["distractor_answers"]) | {doc["answer"]}) == len(doc["distractor_answers"]) + 1


def test_every_attribute_and_depths_spread(docs):
    assert {doc["attribute"] for doc in docs} == set(ctxqa.ATTRIBUTES)
    depths = sorted(doc["depth"] for doc in docs)
    assert depths[0] < 0.15 and depths[-1] > 0.85


@pytest.mark.parametrize(
    ("output", "attribute", "expected"),
    [
        (" Mirela Duvan", "founder", True),
        (" Duvan.", "founder", True),  # the surname alone names the founder
        (" It was founded by Mirela Duvan.", "founder", True),
        (" Mirela", "founder", False),  # a first name is not enough
        (" Kaso Brem", "founder", False),  # another document's founder
        (" Kaso Brem, or maybe Mirela Duvan", "founder", False),  # the first candidate counts
        (" Duvanson", "founder", False),  # whole words only
        ("\nMirela Duvan", "founder", True),  # leading blank lines are skipped
        (" I don't know.\nMirela Duvan", "founder", False),  # only the first line counts
        (" 1743", "year", True),
        (" In 1743.", "year", True),
        (" 17430", "year", False),  # a whole number, not a substring
        (" 1612, not 1743", "year", False),
        (" 1,743", "year", False),
        (" zorvilan", "product", True),
        (" Zorvilans", "product", False),
        (" the Ostrel", "river", True),
        (" Ostrel-Brem", "river", False),
        ("", "river", False),
    ],
)
def test_scoring_on_hand_written_outputs(output, attribute, expected):
    answers = {"founder": "Mirela Duvan", "year": "1743", "product": "zorvilan", "river": "Ostrel"}
    others = {"founder": ["Kaso Brem"], "year": ["1612"], "product": ["drumesil"], "river": ["Brem"]}
    aliases = ctxqa.answer_aliases(attribute, answers[attribute])
    assert ctxqa_correct(output, attribute, aliases, others[attribute]) is expected


def test_task_loads_through_lm_eval(smol):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(
        include_path=str(TASKS_DIR),
        include_defaults=False,
        metadata={"pretrained": "smollm2-135m", "num_docs": 3, "seed": 5},
    )
    assert {f"ctxqa_{n}" for n in ctxqa.LENGTHS} <= set(manager.all_tasks)
    task = manager.load(["ctxqa_1k"])["tasks"]["ctxqa_1k"]
    loaded = list(task.test_docs())
    assert [d["answer"] for d in loaded] == [d["answer"] for d in build_ctxqa_docs(smol, 1024, 3)]
    assert task.config.generation_kwargs["max_gen_toks"] == ctxqa.DEFAULT_GEN_BUDGET
    doc = loaded[0]
    assert task.doc_to_text(doc) == doc["input"]
    assert ctxqa.ctxqa_process_results(doc, [f" {doc['answer']}"]) == {"acc": 1.0}
    assert ctxqa.ctxqa_process_results(doc, [f" {doc['distractor_answers'][0]}"]) == {"acc": 0.0}
