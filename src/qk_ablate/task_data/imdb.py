"""IMDB sentiment (contextual: the answer is in the review given in the prompt).

Data: a local CSV in the format of tests/data/imdb_test_200.csv (columns `review` and
`sentiment`, 1 = positive, 0 = negative), named by the metadata key `imdb_path`
(`--metadata '{"imdb_path": "/path/test.csv"}'`); without it, the Hub dataset `stanfordnlp/imdb`,
split `test` (columns `text`, `label`). The train split is never read: it is sorted by label, and
its first rows are all negative.

Sample: balanced and seeded. `num_docs` (default 200) is rounded down to an even number and capped
at twice the smaller class; each class is sampled with `random.Random(f"qk-ablate/imdb/{seed}")`
and the docs are laid out in pairs of one positive and one negative review (the order within
each pair seeded), so every even prefix (lm-eval's --limit) is balanced too. `<br />` tags
become newlines.

Scoring: multiple_choice on the log-likelihood of " negative" vs " positive" after
"...Is the sentiment of this review positive or negative? Answer:"; no text is parsed.
"""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path
from typing import Any

from qk_ablate.errors import QKAblateError

DEFAULT_NUM_DOCS = 200
HUB_DATASET = "stanfordnlp/imdb"
HUB_SPLIT = "test"
CHOICES = ("negative", "positive")  # index = label: 0 negative, 1 positive
TEMPLATE = "Review: {review}\nIs the sentiment of this review positive or negative? Answer:"
CSV_COLUMNS = ("review", "sentiment")

_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean_review(text: str) -> str:
    """`<br />` (and `<br>`, `<br/>`) become newlines; runs of 3+ newlines collapse to 2."""
    text = _BREAK.sub("\n", text or "")
    text = re.sub(r"[ \t]*\n[ \t]*", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _bad_file(path: Any, why: str) -> QKAblateError:
    return QKAblateError(
        f"imdb_path '{path}' {why}; expected a CSV with columns 'review' (text) and 'sentiment' (1 = positive, 0 = negative)"
    )


def load_csv(path: str | Path) -> list[tuple[str, int]]:
    """(review, label) rows of a local CSV; a missing or malformed file is a one-line QKAblateError."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise _bad_file(path, "does not exist or is not a file")
    csv.field_size_limit(1 << 24)
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:  # Excel writes a byte-order mark
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in CSV_COLUMNS if c not in columns]
            if missing:
                raise _bad_file(path, f"has no column {', '.join(repr(m) for m in missing)} (found {columns})")
            rows = []
            for number, row in enumerate(reader, start=2):
                label = (row.get("sentiment") or "").strip()
                if label not in ("0", "1"):
                    raise _bad_file(path, f"line {number}: sentiment {label!r} is not 0 or 1")
                review = row.get("review")
                if review is None or not review.strip():
                    raise _bad_file(path, f"line {number}: empty review")
                rows.append((review, int(label)))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _bad_file(path, f"could not be read as UTF-8 CSV ({type(exc).__name__}: {exc})") from None
    if not rows:
        raise _bad_file(path, "has no rows")
    return rows


def load_hub() -> list[tuple[str, int]]:
    """(text, label) rows of the Hub's `stanfordnlp/imdb` test split (never the train split)."""
    import datasets

    try:
        data = datasets.load_dataset(HUB_DATASET, split=HUB_SPLIT)
    except Exception as exc:
        raise QKAblateError(
            f"could not load {HUB_DATASET} (split {HUB_SPLIT}) from the Hub ({type(exc).__name__}: {exc}); "
            'to run offline pass --metadata \'{"imdb_path": "<csv with columns review, sentiment>"}\''
        ) from exc
    return [(row["text"], int(row["label"])) for row in data]


def build_docs(rows: list[tuple[str, int]], num_docs: int = DEFAULT_NUM_DOCS, seed: int = 0) -> list[dict[str, Any]]:
    """A balanced, seeded sample of `rows` (see the module docstring)."""
    num_docs = int(num_docs)
    if num_docs < 2:
        raise QKAblateError(f"imdb needs num_docs of at least 2 (one review of each sentiment), got {num_docs}")
    by_label: dict[int, list[int]] = {0: [], 1: []}
    for index, (_, label) in enumerate(rows):
        by_label[label].append(index)
    per_class = min(num_docs // 2, len(by_label[0]), len(by_label[1]))
    if per_class < 1:
        raise QKAblateError("imdb needs at least one positive and one negative review in its data")
    rng = random.Random(f"qk-ablate/imdb/{seed}")
    negatives = rng.sample(by_label[0], per_class)
    positives = rng.sample(by_label[1], per_class)
    order: list[int] = []
    for neg, pos in zip(negatives, positives):
        order.extend((neg, pos) if rng.random() < 0.5 else (pos, neg))
    docs = []
    for index in order:
        review, label = rows[index]
        text = clean_review(review)
        docs.append({"input": TEMPLATE.format(review=text), "review": text, "label": label, "row": index})
    return docs


def imdb_dataset(**metadata):
    """custom_dataset for the `imdb` task: `imdb_path`, `num_docs`, `task_seed` from metadata."""
    from qk_ablate.task_data.settings import as_dataset, num_docs, task_seed

    path = metadata.get("imdb_path")
    rows = load_csv(path) if path not in (None, "") else load_hub()
    return as_dataset(build_docs(rows, num_docs(metadata, DEFAULT_NUM_DOCS), task_seed(metadata)))
