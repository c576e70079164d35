"""A user's own facts as a parametric task, from a CSV and a YAML `include: qk_ablate:facts_csv`.

CSV columns: `question`, `answer`, and optionally `aliases` (other accepted answers, separated by
"|"). The first `facts_fewshot` rows (default 3) become a fixed few-shot prefix and are not
evaluated; every other row is one document "Q: <question>\\nA:". Scored like the built-in fact
sets: the first line of the output (or its first sentence), normalised, must equal the answer or
an alias ("Paris." is right; "Not Paris" and "Paris or Lyon" are not).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from qk_ablate.errors import QKAblateError

TEMPLATE = "Q: {question}\nA:"
DEFAULT_FEWSHOT = 3


def _bad(path: Any, why: str) -> QKAblateError:
    return QKAblateError(
        f"facts_csv '{path}' {why}; expected a CSV with columns 'question', 'answer' and optionally "
        "'aliases' (separated by '|')"
    )


def load_facts(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a facts CSV as {question, answer, aliases}; bad files are one-line errors."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise _bad(path, "does not exist")
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or ())
            if not {"question", "answer"} <= columns:
                raise _bad(path, f"has columns {sorted(columns)}")
            rows = []
            for number, row in enumerate(reader, 2):
                question, answer = (row.get("question") or "").strip(), (row.get("answer") or "").strip()
                if not question or not answer:
                    raise _bad(path, f"has an empty question or answer on line {number}")
                extra = [a.strip() for a in (row.get("aliases") or "").split("|") if a.strip()]
                rows.append({"question": question, "answer": answer, "aliases": [answer, *extra]})
    except UnicodeDecodeError:
        raise _bad(path, "is not UTF-8 text") from None
    except csv.Error as exc:
        raise _bad(path, f"is not valid CSV ({exc})") from None
    return rows


def build_docs(rows: list[dict[str, Any]], fewshot: int = DEFAULT_FEWSHOT) -> list[dict[str, Any]]:
    """The few-shot prefix from the first `fewshot` rows, then one document per remaining row."""
    fewshot = int(fewshot)
    if fewshot < 0 or fewshot >= len(rows):
        raise QKAblateError(
            f"facts_fewshot is {fewshot} but the CSV has {len(rows)} rows; it needs more rows than few-shot examples"
        )
    head = "".join(f"{TEMPLATE.format(question=r['question'])} {r['answer']}\n\n" for r in rows[:fewshot])
    return [{"input": head + TEMPLATE.format(question=r["question"]), **r, "row": i} for i, r in enumerate(rows) if i >= fewshot]


def facts_dataset(facts_csv: str | None = None, facts_fewshot: int = DEFAULT_FEWSHOT, **metadata):
    """custom_dataset of the `qk_ablate:facts_csv` template: `facts_csv` comes from dataset_kwargs."""
    from qk_ablate.task_data.settings import as_dataset

    if not facts_csv:
        raise QKAblateError("a task built on qk_ablate:facts_csv needs dataset_kwargs: {facts_csv: <path to the CSV>}")
    return as_dataset(build_docs(load_facts(facts_csv), facts_fewshot))

