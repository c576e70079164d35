"""GSM8K: the offline `qk_gsm8k` (local JSON lines, lm-eval's own config) and lm-eval's `gsm8k`
running with `qk_ablated`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data import gsm8k

ROOT = Path(__file__).resolve().parent.parent
TASKS_DIR = ROOT / "tasks"


GSM8K_FILE = Path(__file__).parent / "data" / "gsm8k_test_20.jsonl"  # real problems, the Hub file's format


@pytest.fixture(scope="module")
def gsm8k_file(tmp_path_factory) -> Path:
    """The committed GSM8K problems, as a `test.jsonl` in a folder of its own."""
    path = tmp_path_factory.mktemp("gsm8k") / "test.jsonl"
    path.write_bytes(GSM8K_FILE.read_bytes())
    return path


def test_local_file_and_folder(gsm8k_file):
    rows = gsm8k.load_jsonl(gsm8k_file)
    assert len(rows) == 20 and rows[0]["answer"].endswith("#### 18")  # Janet's ducks
    assert gsm8k.load_jsonl(gsm8k_file.parent) == rows  # a folder holding test.jsonl


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("not json\n", "not JSON"),
        ('{"question": "q"}\n', "without text fields"),
        ('{"question": "q", "answer": "7"}\n', "####"),
        ("", "no problems"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(QKAblateError, match=match):
        gsm8k.load_jsonl(path)
    with pytest.raises(QKAblateError, match="does not exist"):
        gsm8k.load_jsonl(tmp_path / "missing.jsonl")


def test_offline_task_keeps_lm_evals_prompt_filters_and_metric():
    from lm_eval.tasks import TaskManager

    import qk_ablate.plugin  # noqa: F401

    ours = yaml.safe_load((TASKS_DIR / "gsm8k" / "qk_gsm8k.yaml").read_text().replace("!function ", ""))
    theirs_path = TaskManager().task_index["gsm8k"].yaml_path
    theirs = yaml.safe_load(Path(theirs_path).read_text())
    for key in (
        "doc_to_text",
        "doc_to_target",
        "metric_list",
        "generation_kwargs",
        "filter_list",
        "num_fewshot",
        "output_type",
    ):
        assert ours[key] == theirs[key], key
    assert ours["fewshot_split"] == ours["test_split"] == "test"  # shots from other test problems


def test_offline_task_runs_from_a_local_file(gsm8k_file):
    """Few-shot examples never include the evaluated problem."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"gsm8k_path": str(gsm8k_file)})
    task = manager.load(["qk_gsm8k"])["tasks"]["qk_gsm8k"]
    docs = list(task.test_docs())
    assert len(docs) == 20
    for doc in docs:
        context = task.fewshot_context(doc, num_fewshot=3)
        assert context.endswith(f"Question: {doc['question']}\nAnswer:")
        assert context.count(doc["question"]) == 1
        assert context.count("Question:") == 4


def test_without_a_path_the_packaged_test_split_is_read_offline(monkeypatch):
    """The wheel ships all 1,319 test problems: no Hub, no metadata needed."""
    from lm_eval.tasks import TaskManager

    monkeypatch.setattr(gsm8k, "load_hub", lambda: pytest.fail("the Hub was asked"))
    task = TaskManager(include_path=str(TASKS_DIR), include_defaults=False).load(["qk_gsm8k"])["tasks"]["qk_gsm8k"]
    docs = list(task.test_docs())
    assert len(docs) == 1319 and docs[0]["question"].startswith("Janet’s ducks lay 16 eggs per day.")
    assert docs[0]["answer"].endswith("#### 18")


@pytest.mark.slow
def test_lm_evals_own_gsm8k_runs_with_qk_ablated(gsm8k_file):
    """lm-eval's `gsm8k` config (its prompt, stop strings, filters) with the embedded model, ablated.

    Only the dataset is swapped for the local file (no Hub here); shots come from its problems.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    import qk_ablate.plugin  # noqa: F401

    rows = gsm8k.load_jsonl(gsm8k_file)
    config = load_yaml(TaskManager().task_index["gsm8k"].yaml_path)  # lm-eval's own gsm8k.yaml

    def local(**_):
        import datasets

        return {"test": datasets.Dataset.from_list(rows), "train": datasets.Dataset.from_list(rows[::-1])}

    results = simple_evaluate(
        model="qk_ablated",
        model_args={"pretrained": "smollm2-135m", "ablate": "massive", "device": "cpu"},
        tasks=[{**config, "dataset_path": "", "dataset_name": "", "custom_dataset": local}],
        num_fewshot=1,
        limit=2,
        gen_kwargs="max_gen_toks=48",
        batch_size=2,
    )
    res = results["results"]["gsm8k"]
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(res)
    assert results["config"]["qk_ablate"]["ablate"] == "massive"
    assert results["n-samples"]["gsm8k"]["effective"] == 2
