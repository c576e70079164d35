"""Haystacks for needle tasks: RULER's repeated noise sentences, or essays (a folder or the Hub).

A haystack is an endless word sequence with sentence boundaries: `text(start, stop)` gives words
`[start, stop)` joined by single spaces, and `place(depth, n)` the sentence start nearest to
`depth * n`, so a needle never splits a sentence. Essays are read like RULER's essay haystack:
all texts concatenated in a fixed order, whitespace collapsed, repeated when a length needs more.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data.filler import filler_text, needle_position

DEFAULT_ESSAY_HUB = "emozilla/PaulGrahamEssays"  # 49 essays, column "text", split "train"
DEFAULT_ESSAY_COLUMN = "text"
_MIN_WORDS = 200


class Haystack(Protocol):
    name: str

    def text(self, start: int, stop: int) -> str: ...

    def place(self, depth: float, n_words: int) -> int: ...


class NoiseHaystack:
    """RULER's noise haystack: "The grass is green. The sky is blue. ..." repeated."""

    name = "noise"

    def text(self, start: int, stop: int) -> str:
        return filler_text(start, stop)

    def place(self, depth: float, n_words: int) -> int:
        return needle_position(depth, n_words)


class EssayHaystack:
    """Words of a corpus of essays, repeated end to end as often as a length needs."""

    def __init__(self, texts: list[str], name: str) -> None:
        words = [word for text in texts for word in text.split()]
        if len(words) < _MIN_WORDS:
            raise QKAblateError(
                f"the essay haystack '{name}' has {len(words)} words; give at least {_MIN_WORDS} words of text"
            )
        self.words = words
        self.name = name
        self.digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
        self._joined = ""
        self._offsets: list[int] = []
        self._starts: list[int] = []
        self._grow(len(words))

    def _grow(self, n_words: int) -> None:
        """Make sure the first `n_words` words (with repeats) are laid out."""
        have = len(self._offsets)
        if have >= n_words:
            return
        size = max(n_words, 2 * have)
        base = len(self.words)
        offsets, starts = self._offsets, self._starts
        pieces = [self._joined] if self._joined else []
        at = len(self._joined) + (1 if self._joined else 0)
        for i in range(have, size):
            word = self.words[i % base]
            offsets.append(at)
            previous = self.words[(i - 1) % base] if i else "."
            if previous[-1] in ".!?" or previous.endswith(('."', ".'", '?"', '!"')):
                starts.append(i)
            pieces.append(word)
            at += len(word) + 1
        self._joined = " ".join(pieces)

    def text(self, start: int, stop: int) -> str:
        if stop <= start:
            return ""
        self._grow(stop)
        last = stop - 1
        return self._joined[self._offsets[start] : self._offsets[last] + len(self.words[last % len(self.words)])]

    def place(self, depth: float, n_words: int) -> int:
        self._grow(n_words + 1)
        want = depth * n_words
        k = bisect_left(self._starts, want)
        candidates = [s for s in self._starts[max(k - 1, 0) : k + 1] if s <= n_words] or [0]
        return min(candidates, key=lambda s: (abs(s - want), s))


def _read_folder(folder: str | Path) -> list[str]:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise QKAblateError(f"essay folder '{folder}' does not exist; give a folder of .txt files")
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise QKAblateError(f"essay folder '{folder}' holds no .txt files; put the haystack texts there as .txt")
    texts = []
    for file in files:
        try:
            texts.append(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise QKAblateError(f"'{file}' is not UTF-8 text; convert it or move it out of the essay folder") from None
    return texts


def _read_hub(repo: str, column: str) -> list[str]:
    try:
        import datasets

        rows = datasets.load_dataset(repo, split="train")
        return [str(text) for text in rows[column]]
    except Exception as exc:
        raise QKAblateError(
            f"could not load the essay haystack '{repo}' from the Hub ({type(exc).__name__}); offline, "
            'pass a folder of .txt files with --metadata \'{"essay_dir": "<folder>"}\''
        ) from None


@lru_cache(maxsize=4)
def essay_haystack(
    essay_dir: str | None = None, hub: str = DEFAULT_ESSAY_HUB, column: str = DEFAULT_ESSAY_COLUMN
) -> EssayHaystack:
    """The essays of `essay_dir` (every .txt file below it, by path), or the Hub dataset `hub`."""
    if essay_dir:
        return EssayHaystack(_read_folder(essay_dir), name=str(essay_dir))
    return EssayHaystack(_read_hub(hub, column), name=hub)
