"""The repeated filler text of passkey prompts and RULER's noise haystack, cut at words and sentences.

"The grass is green. The sky is blue. ..." repeated without end (Mohtashami & Jaggi's filler,
also RULER's noise haystack): `filler_text(start, stop)` gives words `[start, stop)` joined by
single spaces, and `needle_position` the sentence start nearest to a depth, so a needle never
splits a sentence.
"""

from __future__ import annotations

import math
from functools import lru_cache

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

_WORDS = tuple(FILLER.split(" "))
CYCLE_WORDS = len(_WORDS)  # words in one repetition of the filler
_CYCLE_CHARS = len(FILLER) + 1  # one cycle of the filler plus the joining space
_WORD_OFFSETS = tuple(sum(len(w) + 1 for w in _WORDS[:i]) for i in range(len(_WORDS)))
# Word indices (within one cycle of the filler) that start a sentence: 0, 4, 8, 12, 15.
_SENTENCE_STARTS = tuple(i for i in range(len(_WORDS)) if i == 0 or _WORDS[i - 1].endswith("."))


@lru_cache(maxsize=8)
def _filler_string(cycles: int) -> str:
    return " ".join([FILLER] * cycles)


def _word_start(i: int) -> int:
    return (i // len(_WORDS)) * _CYCLE_CHARS + _WORD_OFFSETS[i % len(_WORDS)]


def filler_text(start: int, stop: int) -> str:
    """Filler words `[start, stop)` of the endless filler, joined by single spaces."""
    if stop <= start:
        return ""
    last = stop - 1
    end = _word_start(last) + len(_WORDS[last % len(_WORDS)])
    cycles = 1 << max(4, math.ceil(math.log2(last // len(_WORDS) + 2)))  # few distinct cache keys
    return _filler_string(cycles)[_word_start(start) : end]


def needle_position(depth: float, filler_words: int) -> int:
    """The sentence start nearest to `depth * filler_words` (the needle never splits a sentence)."""
    want = depth * filler_words
    cycle = int(want // len(_WORDS))
    starts = [
        c * len(_WORDS) + s
        for c in (cycle - 1, cycle, cycle + 1)
        for s in _SENTENCE_STARTS
        if 0 <= c * len(_WORDS) + s <= filler_words
    ]
    return min(starts, key=lambda s: (abs(s - want), s)) if starts else 0
