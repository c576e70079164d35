"""Context lengths by name: the `_1k` ... `_128k` of our length tasks, in the model's tokens."""

from __future__ import annotations

from qk_ablate.errors import QKAblateError

LENGTHS: dict[str, int] = {
    "1k": 1024,
    "2k": 2048,
    "4k": 4096,
    "8k": 8192,
    "16k": 16384,
    "32k": 32768,
    "64k": 65536,
    "128k": 131072,
}


def parse_length(name: str | int) -> int:
    """`"4k"` -> 4096; an int (or digit string) is taken as a token count."""
    if isinstance(name, int):
        return name
    text = str(name).strip().lower()
    if text in LENGTHS:
        return LENGTHS[text]
    if text.isdigit():
        return int(text)
    raise QKAblateError(f"unknown length '{name}'; use one of {', '.join(LENGTHS)} or a token count")
