"""GSM8K that runs offline (`qk_gsm8k`): lm-eval's gsm8k prompt, filters and metric on local data.

Data: without `gsm8k_path`, the test split that ships with the package (`gsm8k_test.jsonl`: all
1,319 problems of `openai/gsm8k`, config `main`, MIT licence), so it runs offline as installed.
`--metadata '{"gsm8k_path": "..."}'` names another JSON-lines file in the same format (one object
a line: `question`, `answer` = reasoning then `#### <number>`), or a folder holding `test.jsonl`;
`"gsm8k_path": "hub"` loads the Hub's copy instead. Every problem of the file is evaluated, in file order.

Differences from lm-eval's `gsm8k` (which needs the Hub): the 5 few-shot examples are drawn from
the *other* test problems (lm-eval excludes the evaluated problem when the few-shot split is the
test split), because a local test file is all an offline user has; lm-eval's gsm8k draws them
from the train split. Everything else (prompt "Question: ...\\nAnswer:", stop strings,
`strict-match` and `flexible-extract` filters, `exact_match`) is the same config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qk_ablate.errors import QKAblateError

HUB_DATASET = ("openai/gsm8k", "main")
PACKAGED = Path(__file__).with_name("gsm8k_test.jsonl")
FIELDS = ("question", "answer")


def _bad(path: Any, why: str) -> QKAblateError:
    return QKAblateError(
        f"gsm8k_path '{path}' {why}; expected a JSON-lines file (or a folder with test.jsonl) whose lines "
        "hold 'question' and 'answer' (reasoning, then '#### <number>')"
    )


def load_jsonl(path: str | Path) -> list[dict[str, str]]:
    """The problems of a local GSM8K file; a missing or malformed one is a one-line QKAblateError."""
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "test.jsonl"
    if not file.is_file():
        raise _bad(path, "does not exist")
    rows = []
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise _bad(path, f"has a line that is not JSON (line {number})") from None
            if not isinstance(record, dict) or any(not isinstance(record.get(k), str) for k in FIELDS):
                raise _bad(path, f"has a line without text fields 'question' and 'answer' (line {number})")
            if "####" not in record["answer"]:
                raise _bad(path, f"has an answer without '#### <number>' (line {number})")
            rows.append({"question": record["question"], "answer": record["answer"]})
    if not rows:
        raise _bad(path, "holds no problems")
    return rows


def load_hub() -> list[dict[str, str]]:
    import datasets

    try:
        data = datasets.load_dataset(*HUB_DATASET, split="test")
    except Exception as exc:
        raise QKAblateError(
            f"could not load {HUB_DATASET[0]} from the Hub ({type(exc).__name__}); to run offline leave "
            "gsm8k_path out (the packaged test split) or name a local test.jsonl"
        ) from None
    return [{"question": row["question"], "answer": row["answer"]} for row in data]


def gsm8k_dataset(**metadata):
    """custom_dataset for `qk_gsm8k`: the packaged test split, or the file `gsm8k_path` ("hub": the Hub's)."""
    from qk_ablate.task_data.settings import as_dataset

    path = metadata.get("gsm8k_path")
    if path == "hub":
        return as_dataset(load_hub())
    return as_dataset(load_jsonl(PACKAGED if path in (None, "") else path))
