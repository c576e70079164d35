"""imdb: balanced seeded sample of the test split, <br /> handling, bad files, lm-eval loading."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import docs_digest as _digest

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data import imdb

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"
SHARED_CSV = Path(__file__).resolve().parent / "data" / "imdb_test_200.csv"  # 200 real IMDB test reviews


@pytest.fixture(scope="module")
def rows():
    return imdb.load_csv(SHARED_CSV)


@pytest.fixture(scope="module")
def docs():
    return imdb.imdb_dataset(imdb_path=str(SHARED_CSV))["test"].to_list()


def test_balanced_and_capped(rows, docs):
    negatives = sum(1 for _, label in rows if label == 0)
    positives = len(rows) - negatives
    assert len(docs) == 2 * min(negatives, positives, 100)
    assert sum(d["label"] for d in docs) == len(docs) // 2
    for k in range(0, len(docs), 2):  # every even prefix (lm-eval --limit) is balanced
        assert docs[k]["label"] + docs[k + 1]["label"] == 1
    assert len({d["row"] for d in docs}) == len(docs)
    small = imdb.build_docs(rows, num_docs=11, seed=0)
    assert len(small) == 10 and sum(d["label"] for d in small) == 5
    assert len(imdb.build_docs(rows, num_docs=10_000)) == 2 * min(negatives, positives)
    with pytest.raises(QKAblateError):
        imdb.build_docs(rows, num_docs=1)
    with pytest.raises(QKAblateError):
        imdb.build_docs([(r, 1) for r, _ in rows[:5]], num_docs=4)


def test_determinism_per_seed(rows, docs):
    assert _digest(imdb.imdb_dataset(imdb_path=str(SHARED_CSV))["test"].to_list()) == _digest(docs)
    assert _digest(imdb.build_docs(rows, 200, seed=0)) == _digest(docs)
    other = imdb.build_docs(rows, 20, seed=1)
    assert _digest(other) != _digest(imdb.build_docs(rows, 20, seed=0))
    assert _digest(other) == _digest(imdb.build_docs(rows, 20, seed=1))
    via_metadata = imdb.imdb_dataset(imdb_path=str(SHARED_CSV), num_docs=20, task_seed=1)["test"].to_list()
    assert _digest(via_metadata) == _digest(other)


def test_prompt_and_br_handling(docs):
    assert any("<br" in review for review, _ in imdb.load_csv(SHARED_CSV))
    for doc in docs:
        assert "<br" not in doc["input"].lower()
        assert doc["input"] == imdb.TEMPLATE.format(review=doc["review"])
        assert doc["input"].startswith("Review: ")
        assert doc["input"].endswith("\nIs the sentiment of this review positive or negative? Answer:")
    assert any("\n" in d["review"] for d in docs)
    assert imdb.clean_review("Good.<br /><br />Really <BR>good<br/>.") == "Good.\n\nReally\ngood\n."


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "reviews.csv"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "content",
    [
        None,  # missing file
        "text,label\nfine,1\n",  # the Hub's column names are not the CSV format
        "review,sentiment\nfine,positive\n",  # labels must be 1/0
        "review,sentiment\n",  # no rows
        "review,sentiment\n,1\n",  # empty review
    ],
)
def test_bad_files(tmp_path, content):
    path = tmp_path / "missing.csv" if content is None else _write(tmp_path, content)
    with pytest.raises(QKAblateError) as info:
        imdb.imdb_dataset(imdb_path=str(path))
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "'review'" in message and "'sentiment'" in message


def test_bad_bytes(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"review,sentiment\n\xe9t\xe9,1\n")
    with pytest.raises(QKAblateError, match="UTF-8"):
        imdb.load_csv(path)


def test_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("review,sentiment\r\ngreat,1\r\nawful,0\r\n".encode("utf-8-sig"))
    assert imdb.load_csv(path) == [("great", 1), ("awful", 0)]


def test_hub_loader_asks_only_for_the_test_split(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, *args, **kwargs):
        calls.append((name, args, kwargs))
        rows = [{"text": f"review {i}<br />more", "label": i % 2} for i in range(10)]
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    built = imdb.imdb_dataset(num_docs=6)["test"].to_list()
    assert calls == [("stanfordnlp/imdb", (), {"split": "test"})]
    assert len(built) == 6 and sum(d["label"] for d in built) == 3
    assert all("<br" not in d["input"] and "\nmore" in d["input"] for d in built)


def test_hub_failure_is_one_line(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(QKAblateError, match="imdb_path") as info:
        imdb.imdb_dataset()
    assert "\n" not in str(info.value)


def test_task_manager_loads_imdb():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"imdb_path": str(SHARED_CSV)})
    task = tm.load(["imdb"])["tasks"]["imdb"]
    assert task.config.output_type == "multiple_choice"
    task_docs = list(task.test_docs())
    assert len(task_docs) == 198
    doc = task_docs[0]
    assert task.doc_to_choice(doc) == ["negative", "positive"]
    assert task.doc_to_target(doc) == doc["label"]
    assert task.doc_to_text(doc) == doc["input"]
    requests = task.construct_requests(doc, task.doc_to_text(doc))
    assert [r.arguments[1] for r in requests] == [" negative", " positive"]
