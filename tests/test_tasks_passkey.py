"""passkey_{len}: exact lengths in two different tokenizers, determinism, depth spread, scoring,
and the lm-eval wiring (TaskManager loading, metadata reaching the builder, group aggregation)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import docs_digest as _digest
from conftest import token_count as _count

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data import passkey, settings
from qk_ablate.task_data.lengths import LENGTHS, parse_length
from qk_ablate.task_data.passkey import (
    INTRO,
    QUESTION,
    build_passkey_docs,
    needle,
)
from qk_ablate.task_data.scoring import first_number, passkey_correct

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"
GEN_BUDGET = 8


def test_toy_tokenizer_differs_and_adds_bos(smol, toy):
    text = "The grass is green. The pass key is 12345."
    assert toy(text)["input_ids"][0] == toy.convert_tokens_to_ids("<s>")
    assert _count(toy, text) != _count(smol, text)


def test_prompt_layout(smol):
    doc = build_passkey_docs(smol, 1024, num_docs=1)[0]
    text, key = doc["input"], doc["passkey"]
    assert re.fullmatch(r"[1-9]\d{4}", key)
    assert text.startswith(INTRO + "\n")
    assert text.endswith("\n" + QUESTION)
    assert text.count(needle(key)) == 1
    assert text.count(key) == 2
    assert "The grass is green. The sky is blue." in text
    lines = text.split("\n")
    assert needle(key) in lines  # the needle is a line of its own, between whole sentences
    i = lines.index(needle(key))
    assert lines[i - 1] == INTRO or lines[i - 1].endswith(".")
    assert lines[i + 1] == QUESTION or lines[i + 1].startswith(("The ", "Here ", "There "))


def test_same_seed_same_docs_other_seed_other_docs(smol, toy):
    a = build_passkey_docs(smol, 2048, num_docs=8, seed=0)
    b = build_passkey_docs(smol, 2048, num_docs=8, seed=0)
    c = build_passkey_docs(smol, 2048, num_docs=8, seed=1)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    assert [d["passkey"] for d in a] != [d["passkey"] for d in c]
    # the pass keys and depths do not depend on the tokenizer; only the filler amount does
    t = build_passkey_docs(toy, 2048, num_docs=8, seed=0)
    assert [d["passkey"] for d in t] == [d["passkey"] for d in a]


def test_default_docs_and_depth_spread(smol):
    docs = build_passkey_docs(smol, 1024)
    assert len(docs) == 100
    depths = [d["depth"] for d in docs]
    assert all(0.0 <= x <= 1.0 for x in depths)
    deciles = [sum(1 for x in depths if k / 10 <= x < (k + 1) / 10 or (k == 9 and x == 1.0)) for k in range(10)]
    assert all(8 <= n <= 12 for n in deciles), deciles
    # lm-eval's --limit takes a prefix: the first ten documents are spread too
    assert len({min(int(x * 10), 9) for x in depths[:10]}) >= 7
    assert len({d["passkey"] for d in docs}) >= 95


def test_bad_settings_are_readable_errors(smol):
    with pytest.raises(QKAblateError):
        build_passkey_docs(smol, 64, num_docs=1)  # the fixed text alone is longer
    with pytest.raises(QKAblateError):
        build_passkey_docs(smol, 1024, num_docs=0)
    assert parse_length("4k") == 4096 and parse_length(1000) == 1000
    with pytest.raises(QKAblateError):
        parse_length("huge")


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (" 12345.", True),
        ("The pass key is 12345.", True),
        ("12345", True),
        (" 12,345", True),
        ("12345 is the pass key", True),
        (" 123456", False),  # a longer number is not a hit
        (" 112345", False),
        (" 1234", False),
        (" 12346", False),
        (" -12345", False),
        (" 12345.5", False),
        (" 54321 or 12345", False),  # only the first number counts
        (" twelve thousand", False),
        ("", False),
        ("\n12345", True),
    ],
)
def test_passkey_scoring(output, expected):
    assert passkey_correct(output, "12345") is expected
    assert passkey_correct(output, 12345) is expected


def test_first_number():
    assert first_number("abc 1,234,567 def") == "1234567"
    assert first_number("no digits") is None


# --- lm-eval wiring -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task_manager(smol):
    from lm_eval.tasks import TaskManager

    return TaskManager(
        include_path=str(TASKS_DIR),
        include_defaults=False,
        metadata={"pretrained": "smollm2-135m", "num_docs": 4, "seed": 7},
    )


def test_task_manager_indexes_everything(task_manager):
    names = set(task_manager.all_tasks)
    assert {f"passkey_{n}" for n in LENGTHS} <= names
    assert {"qk_contextual", "qk_parametric", "qk_knowledge"} <= set(task_manager.all_groups)


def test_metadata_reaches_the_builder(task_manager, smol):
    loaded = task_manager.load(["passkey_1k"])
    task = loaded["tasks"]["passkey_1k"]
    docs = list(task.test_docs())
    assert len(docs) == 4  # num_docs from the run-time metadata
    # `seed` (a model argument) must not change the documents; task_seed does
    assert [d["passkey"] for d in docs] == [d["passkey"] for d in build_passkey_docs(smol, 1024, num_docs=4)]
    assert task.config.generation_kwargs["max_gen_toks"] == GEN_BUDGET
    assert task.doc_to_text(docs[0]) == docs[0]["input"]
    assert passkey.passkey_process_results(docs[0], [f" {docs[0]['passkey']}."]) == {"acc": 1.0}
    assert passkey.passkey_process_results(docs[0], [" 1"]) == {"acc": 0.0}


def test_group_loads_its_lengths(task_manager):
    loaded = task_manager.load(["qk_passkey"])
    assert set(loaded["tasks"]) == {f"passkey_{n}" for n in LENGTHS}
    assert "qk_passkey" in loaded["groups"]


def test_tokenizer_resolution(smol, toy, monkeypatch):
    assert settings.resolve_tokenizer({"pretrained": "smollm2-135m"}) is smol
    assert settings.resolve_tokenizer({"tokenizer": toy, "pretrained": "smollm2-135m"}) is toy
    monkeypatch.setattr(settings, "_EVALUATED", [])  # no qk_ablated model built in this process
    with pytest.raises(QKAblateError, match="no tokenizer was given"):
        settings.resolve_tokenizer({"version": 1.0})
    settings.evaluating(toy)  # the model lm-eval built before the tasks: its tokenizer sizes them
    assert settings.resolve_tokenizer({"version": 1.0}) is toy
    assert settings.resolve_tokenizer({"pretrained": "smollm2-135m"}) is smol  # a named one still wins
    with pytest.raises(QKAblateError, match="could not load the tokenizer"):
        settings.resolve_tokenizer({"pretrained": "/nonexistent/model/dir"})
    with pytest.raises(QKAblateError, match="num_docs"):
        passkey.passkey_dataset(1024, tokenizer=toy, num_docs="many")
    data = passkey.passkey_dataset("1k", tokenizer=toy, num_docs=2, task_seed=3, version=1.0)
    assert len(data["test"]) == 2


class _Oracle:
    """Reads the pass key from the prompt (always right), says 'lol' to questions, always True."""

    @staticmethod
    def make():
        from lm_eval.api.model import LM

        class Oracle(LM):
            def generate_until(self, requests, disable_tqdm=False):
                out = []
                for request in requests:
                    found = re.search(r"The pass key is (\d+)\. Remember it", request.arguments[0])
                    out.append(f" {found.group(1)}." if found else " lol")
                return out

            def loglikelihood(self, requests, disable_tqdm=False):
                return [(0.0 if request.arguments[1] == " True" else -1.0, True) for request in requests]

            def loglikelihood_rolling(self, requests, disable_tqdm=False):
                return [0.0 for _ in requests]

        return Oracle()


def test_end_to_end_group_aggregation(smol):
    """Groups pool their tasks weighted by size and report a standard error."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    imdb_csv = Path(__file__).parent / "data" / "imdb_test_200.csv"
    manager = TaskManager(
        include_path=str(TASKS_DIR),
        include_defaults=False,
        metadata={"pretrained": "smollm2-135m", "num_docs": 4, "imdb_path": str(imdb_csv)},
    )
    results = simple_evaluate(model=_Oracle.make(), tasks=["qk_knowledge"], task_manager=manager)
    res = results["results"]
    assert res["passkey_1k"]["acc,none"] == 1.0 and res["niah_1k"]["acc,none"] == 0.0
    assert res["imdb"]["acc,none"] == 0.5  # balanced; equal log-likelihoods pick the first label
    # 16 synthetic tasks x 4 docs (4 passkey tasks right) + imdb (2 of 4 right)
    assert res["qk_contextual"]["acc,none"] == pytest.approx((16 + 2) / 68)
    assert res["city_facts_tf"]["acc,none"] == 0.5  # balanced: always-True gets half
    assert res["qk_parametric"]["acc,none"] == pytest.approx(2 / 16)
    assert res["qk_knowledge"]["acc,none"] == pytest.approx(20 / 84)
    for group in ("qk_contextual", "qk_parametric", "qk_knowledge"):
        assert 0 < float(res[group]["acc_stderr,none"]) < 0.1


def test_fit_units_on_a_synthetic_counter():
    from qk_ablate.task_data.tokens import fit_units

    def count(texts):  # 10 fixed tokens, then a bumpy 1-3 tokens per unit
        return [10 + sum(1 + (i * 7919) % 3 for i in range(int(t))) for t in texts]

    for target in (11, 50, 997, 5000):
        n, text, tokens = fit_units(str, count, target, guess=3, per_unit=0.5)
        assert tokens == count([text])[0] <= target
        assert count([str(n + 1)])[0] > target  # tolerance 0: the largest n that fits
    with pytest.raises(QKAblateError):
        fit_units(str, count, 9, guess=100, per_unit=2.0)


def test_spread_fractions_cover_every_cell():
    from qk_ablate.task_data.tokens import spread_fractions

    values = spread_fractions([0.5] * 37)
    assert sorted(int(v * 37) for v in values) == list(range(37))
    assert len({int(v * 4) for v in values[:4]}) >= 3
