"""The own-data example of docs/tasks.md (examples/own_data) builds its three tasks with their kinds."""

from __future__ import annotations

from pathlib import Path

import qk_ablate.plugin  # noqa: F401  (the qk_ablate: template resolver)

ROOT = Path(__file__).resolve().parents[1]


def test_own_data_example_tasks_build(monkeypatch):
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(ROOT)  # the example's YAMLs name their files from the repository root, as run.sh runs
    manager = TaskManager(
        include_path=str(ROOT / "examples" / "own_data" / "tasks"),
        metadata={"pretrained": "smollm2-135m", "num_docs": 3},
    )
    tasks = manager.load(["my_facts", "my_statements", "niah_mydocs_2k"])["tasks"]
    docs = {name: list(task.test_docs()) for name, task in tasks.items()}
    assert (len(docs["my_facts"]), len(docs["my_statements"]), len(docs["niah_mydocs_2k"])) == (11, 12, 3)
    assert {name: task.config.metadata["kind"] for name, task in tasks.items()} == {
        "my_facts": "parametric",
        "my_statements": "parametric",
        "niah_mydocs_2k": "contextual",
    }
    assert "orchard" in docs["niah_mydocs_2k"][0]["input"] or "harbour" in docs["niah_mydocs_2k"][0]["input"]
