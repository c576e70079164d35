"""A user's own CSV for a no-Python task template, read so that every bad file is one error line.

Shared by `user_facts` (`qk_ablate:facts_csv`) and `user_statements` (`qk_ablate:statements_csv`):
the file is UTF-8 (a byte-order mark is fine), has a header row naming the columns, and extra
columns are ignored. The few-shot count (`facts_fewshot`, `statements_fewshot`) is checked here
too, as it comes from the user's YAML.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from qk_ablate.errors import QKAblateError


def bad_file(option: str, path: Any, why: str, expected: str) -> QKAblateError:
    """One line: which option's file, what is wrong with it, and what the file should be."""
    return QKAblateError(f"{option} '{path}' {why}; expected {expected}")


def read_rows(
    path: str | Path, option: str, columns: tuple[str, ...], expected: str
) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for every data row, cells stripped; the file must have `columns`."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise bad_file(option, path, "does not exist or is not a file", expected)
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            found = list(reader.fieldnames or ())
            if not found or not any(name.strip() for name in found):
                raise bad_file(option, path, "is empty (no header line)", expected)
            missing = [c for c in columns if c not in found]
            if missing:
                names = ", ".join(repr(c) for c in missing)
                hint = ": is its header line missing?" if len(missing) == len(columns) else ""
                raise bad_file(option, path, f"has no column {names} (its first line reads {found}{hint})", expected)
            rows = [
                (reader.line_num, {k: (v or "").strip() for k, v in row.items() if isinstance(k, str)})
                for row in reader
            ]
    except UnicodeDecodeError:
        raise bad_file(option, path, "is not UTF-8 text", expected) from None
    except csv.Error as exc:
        raise bad_file(option, path, f"is not valid CSV ({exc})", expected) from None
    if not rows:
        raise bad_file(option, path, "has no rows below its header", expected)
    return rows


def fewshot_count(value: Any, option: str) -> int:
    """The few-shot count from a user's YAML as a whole number of at least 0."""
    number = -1
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            number = int(value)
        except ValueError:
            pass
    if number < 0:
        raise QKAblateError(f"{option} must be a whole number of at least 0, got {value!r}")
    return number
