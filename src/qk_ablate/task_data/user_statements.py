"""A user's own true/false statements as a parametric task: `include: qk_ablate:statements_csv`.

The form of `city_facts_tf` and of the paper's own parametric data: each document is
"Statement: <statement>\\nTrue or false? Answer:", scored by the likelihood of " True" vs
" False" (multiple_choice), so no generated text is parsed.

CSV columns: `statement` and `label`, the truth of the statement: true/false, yes/no or 1/0, in
any case (1 = true). In the documents, as in city_facts_tf, `label` is the index of the right
choice: 0 = " True" (a true statement), 1 = " False"; `is_true` keeps the truth itself.

Few-shot prefix: `statements_fewshot` rows (default 4) drawn seeded (`task_seed`, default 0),
half true and half false (an odd count gives the extra one to the label with more rows to spare,
a seeded pick on a tie), laid out in pairs of one true and one false statement in seeded order;
they are not evaluated. Every label the file has keeps at least one row for evaluation, so a
label with too few rows gives all but one of them and the other label fills the prefix (a
warning says the prefix is unbalanced); a count that leaves no such prefix is an error. The
documents are the other rows, in file order (lm-eval's --limit takes the first ones).

`statements_choices` (optional, default ["True", "False"]) names the two answer words, the true
one first; the question line follows them ("Yes or no? Answer:" for ["Yes", "No"]).
"""

from __future__ import annotations

import logging
import random
from itertools import zip_longest
from pathlib import Path
from typing import Any

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data.user_csv import bad_file, fewshot_count, read_rows

TEMPLATE = "Statement: {statement}\n{question} Answer:"
CHOICES = ("True", "False")
DEFAULT_FEWSHOT = 4
TRUTH = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
EXPECTED = "a CSV with columns 'statement' and 'label' (true/false, yes/no or 1/0, 1 = true)"

log = logging.getLogger(__name__)


def load_statements(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a statements CSV as {statement, is_true}; bad files are one-line errors."""
    rows = []
    for line, row in read_rows(path, "statements_csv", ("statement", "label"), EXPECTED):
        if not row["statement"]:
            raise bad_file("statements_csv", path, f"has an empty statement on line {line}", EXPECTED)
        truth = TRUTH.get(row["label"].casefold())
        if truth is None:
            raise bad_file(
                "statements_csv",
                path,
                f"has label {row['label']!r} on line {line}, which is not one of true, false, yes, no, 1, 0 (any case)",
                EXPECTED,
            )
        rows.append({"statement": row["statement"], "is_true": truth})
    return rows


def choice_words(value: Any = None) -> tuple[str, str]:
    """The answer words (true one first) from `statements_choices`, checked."""
    if value is None:
        return CHOICES
    words = tuple(value) if isinstance(value, (list, tuple)) else ()
    if (
        len(words) != 2
        or not all(isinstance(w, str) and w.strip() for w in words)
        or words[0].strip() == words[1].strip()
    ):
        raise QKAblateError(
            f'statements_choices must be two different quoted words, the true one first, e.g. ["Yes", "No"], got {value!r} '
            "(unquoted Yes/No/True/False are booleans in YAML)"
        )
    return words[0].strip(), words[1].strip()


def draw_fewshot(truths: list[bool], fewshot: int, seed: int = 0) -> list[int]:
    """Row indices of the few-shot prefix: seeded, balanced, in true/false pairs (see the docstring)."""
    fewshot = fewshot_count(fewshot, "statements_fewshot")
    rng = random.Random(f"qk-ablate/statements_csv/{seed}")
    rows = {label: [i for i, t in enumerate(truths) if bool(t) is label] for label in (True, False)}
    spare = {label: max(len(found) - 1, 0) for label, found in rows.items()}  # one row of each label stays evaluated
    if fewshot > sum(spare.values()):
        raise QKAblateError(
            f"statements_fewshot is {fewshot} but the CSV has {len(rows[True])} true and {len(rows[False])} false "
            f"statements; the prefix may take all but one of each label (at most {sum(spare.values())}), "
            "so lower statements_fewshot or add rows"
        )
    take = {label: min(fewshot // 2, spare[label]) for label in rows}
    while sum(take.values()) < fewshot:
        room = {label: spare[label] - take[label] for label in rows}
        most = [label for label in (True, False) if room[label] == max(room.values())]
        take[rng.choice(most)] += 1
    if abs(take[True] - take[False]) > 1:
        log.warning(
            "statements_fewshot %d: the CSV has %d true and %d false statements, so the prefix holds %d true and %d false",
            fewshot,
            len(rows[True]),
            len(rows[False]),
            take[True],
            take[False],
        )
    shots = {label: rng.sample(rows[label], take[label]) for label in rows}
    order: list[int] = []
    for both in zip_longest(shots[True], shots[False]):
        pair = [i for i in both if i is not None]
        rng.shuffle(pair)
        order.extend(pair)
    return order


def build_docs(
    rows: list[dict[str, Any]], fewshot: int = DEFAULT_FEWSHOT, seed: int = 0, choices: tuple[str, str] = CHOICES
) -> list[dict[str, Any]]:
    """The seeded balanced prefix, then one document per other row, in file order."""
    question = f"{choices[0]} or {choices[1].lower()}?"

    def prompt(row: dict[str, Any]) -> str:
        return TEMPLATE.format(statement=row["statement"], question=question)

    shots = draw_fewshot([r["is_true"] for r in rows], fewshot, seed)
    head = "".join(f"{prompt(rows[i])} {choices[0] if rows[i]['is_true'] else choices[1]}\n\n" for i in shots)
    held_out = set(shots)
    return [
        {"input": head + prompt(r), **r, "label": 0 if r["is_true"] else 1, "choices": list(choices), "row": i}
        for i, r in enumerate(rows)
        if i not in held_out
    ]


def statements_dataset(
    statements_csv: str | None = None,
    statements_fewshot: int = DEFAULT_FEWSHOT,
    statements_choices: Any = None,
    **metadata: Any,
) -> dict[str, Any]:
    """custom_dataset of the `qk_ablate:statements_csv` template: the options come from dataset_kwargs."""
    from qk_ablate.task_data.settings import as_dataset, task_seed

    if not statements_csv:
        raise QKAblateError(
            "a task built on qk_ablate:statements_csv needs dataset_kwargs: {statements_csv: <path to the CSV>}"
        )
    choices = choice_words(statements_choices)
    return as_dataset(build_docs(load_statements(statements_csv), statements_fewshot, task_seed(metadata), choices))
