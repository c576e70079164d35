"""A user's own facts as a parametric task, from a CSV and a YAML `include: qk_ablate:facts_csv`.

CSV columns: `question`, `answer`, and optionally `aliases` (other accepted answers, separated by
"|"). `facts_fewshot` rows (default 3) are drawn seeded (`task_seed`, default 0) from the whole
file, not taken from its top, so a file sorted by topic or answer does not give a one-sided
prefix; they form a fixed few-shot prefix and are not evaluated. Every other row, in file order,
is one document "Q: <question>\\nA:". Facts have no label to balance, so the draw is a plain seeded
sample. Scored like the built-in fact sets: the first line of the output (or its first sentence),
normalised, must equal the answer or an alias ("Paris." is right; "Not Paris" and "Paris or
Lyon" are not).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data.user_csv import bad_file, fewshot_count, read_rows

TEMPLATE = "Q: {question}\nA:"
DEFAULT_FEWSHOT = 3
EXPECTED = "a CSV with columns 'question', 'answer' and optionally 'aliases' (separated by '|')"


def load_facts(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a facts CSV as {question, answer, aliases}; bad files are one-line errors."""
    rows = []
    for line, row in read_rows(path, "facts_csv", ("question", "answer"), EXPECTED):
        question, answer = row["question"], row["answer"]
        if not question or not answer:
            raise bad_file("facts_csv", path, f"has an empty question or answer on line {line}", EXPECTED)
        extra = [a.strip() for a in row.get("aliases", "").split("|") if a.strip()]
        rows.append({"question": question, "answer": answer, "aliases": [answer, *extra]})
    return rows


def build_docs(rows: list[dict[str, Any]], fewshot: int = DEFAULT_FEWSHOT, seed: int = 0) -> list[dict[str, Any]]:
    """The few-shot prefix from `fewshot` seeded rows, then one document per other row, in file order."""
    fewshot = fewshot_count(fewshot, "facts_fewshot")
    if fewshot >= len(rows):
        raise QKAblateError(
            f"facts_fewshot is {fewshot} but the CSV has {len(rows)} rows; it needs more rows than few-shot examples"
        )
    shots = random.Random(f"qk-ablate/facts_csv/{seed}").sample(range(len(rows)), fewshot)
    head = "".join(f"{TEMPLATE.format(question=rows[i]['question'])} {rows[i]['answer']}\n\n" for i in shots)
    held_out = set(shots)
    return [
        {"input": head + TEMPLATE.format(question=r["question"]), **r, "row": i}
        for i, r in enumerate(rows)
        if i not in held_out
    ]


def facts_dataset(
    facts_csv: str | None = None, facts_fewshot: int = DEFAULT_FEWSHOT, **metadata: Any
) -> dict[str, Any]:
    """custom_dataset of the `qk_ablate:facts_csv` template: `facts_csv` comes from dataset_kwargs."""
    from qk_ablate.task_data.settings import as_dataset, task_seed

    if not facts_csv:
        raise QKAblateError("a task built on qk_ablate:facts_csv needs dataset_kwargs: {facts_csv: <path to the CSV>}")
    return as_dataset(build_docs(load_facts(facts_csv), facts_fewshot, task_seed(metadata)))
