"""A user's own facts as a parametric task, from a CSV and a YAML `include: qk_ablate:facts_csv`.

CSV columns: `question`, `answer`, and optionally `aliases` (other accepted answers, separated by
"|"). A CSV in another form (statements, say, like the paper's cities file: `city`,
`correct_country`, ...) runs as it is: `facts_question` is the question written over its columns
("In which country is {city}?") and `facts_answer` / `facts_aliases` name its answer and aliases
columns. A row whose question and answer repeat an earlier row's is read once (such a file holds
each city in a true and a false statement). `facts_fewshot` rows (default 3) are drawn seeded
(`task_seed`, default 0) from the whole file, not taken from its top, so a file sorted by topic or
answer does not give a one-sided prefix; they form a fixed few-shot prefix and are not evaluated.
Every other row, in file order, is one document "Q: <question>\nA:". Facts have no label to
balance, so the draw is a plain seeded sample. Scored like the built-in fact sets: the first line
of the output (or its first sentence), normalised, must equal the answer or an alias ("Paris." is
right; "Not Paris" and "Paris or Lyon" are not).
"""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data.user_csv import bad_file, fewshot_count, read_rows

TEMPLATE = "Q: {question}\nA:"
DEFAULT_FEWSHOT = 3
EXPECTED = "a CSV with columns 'question', 'answer' and optionally 'aliases' (separated by '|')"


def load_facts(
    path: str | Path, question: str | None = None, answer: str = "answer", aliases: str = "aliases"
) -> list[dict[str, Any]]:
    """Rows of a facts CSV as {question, answer, aliases}, each distinct pair once; bad files are one-line
    errors. `question`: a template over the CSV's columns (None: the `question` column)."""
    template = "{question}" if question is None else _template(question)
    needed = tuple(dict.fromkeys([*_fields(template), answer]))
    expected = EXPECTED if question is None and answer == "answer" else f"a CSV with columns {', '.join(needed)}"
    rows, seen = [], set()
    for line, row in read_rows(path, "facts_csv", needed, expected):
        asked, said = template.format(**row).strip(), row[answer]
        if not asked or not said or any(not row[field] for field in _fields(template)):
            raise bad_file("facts_csv", path, f"has an empty question or answer on line {line}", expected)
        if (asked, said) in seen:
            continue
        seen.add((asked, said))
        extra = [a.strip() for a in row.get(aliases, "").split("|") if a.strip()]
        rows.append({"question": asked, "answer": said, "aliases": [said, *extra]})
    return rows


def _fields(template: str) -> list[str]:
    """The column names a question template reads, in order."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def _template(text: Any) -> str:
    """A user's `facts_question`, checked: text with at least one {column} and nothing format() would reject."""
    text = str(text)
    try:
        fields = _fields(text)
        text.format(**dict.fromkeys(fields, ""))
    except (ValueError, IndexError, KeyError) as exc:
        raise QKAblateError(
            f"facts_question {text!r} is not a valid template ({exc}); write e.g. 'In which country is {{city}}?'"
        ) from None
    if not fields:
        raise QKAblateError(
            f"facts_question {text!r} names no column; write the column in braces, e.g. 'In which country is {{city}}?'"
        )
    return text


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
    facts_csv: str | None = None,
    facts_fewshot: int = DEFAULT_FEWSHOT,
    facts_question: str | None = None,
    facts_answer: str = "answer",
    facts_aliases: str = "aliases",
    **metadata: Any,
) -> dict[str, Any]:
    """custom_dataset of the `qk_ablate:facts_csv` template: `facts_csv` (and the optional question
    template and column names) come from dataset_kwargs."""
    from qk_ablate.task_data.settings import as_dataset, task_seed

    if not facts_csv:
        raise QKAblateError("a task built on qk_ablate:facts_csv needs dataset_kwargs: {facts_csv: <path to the CSV>}")
    rows = load_facts(facts_csv, facts_question, str(facts_answer), str(facts_aliases))
    return as_dataset(build_docs(rows, facts_fewshot, task_seed(metadata)))
