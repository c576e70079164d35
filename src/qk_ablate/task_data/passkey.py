"""Passkey retrieval documents (Mohtashami & Jaggi, "Landmark Attention", 2023), at exact lengths.

Prompt layout (lines joined by "\\n", as in the authors' script)::

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. ...
    The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. The ...
    The pass key is 12345. Remember it. 12345 is the pass key.
    ... grass is green. The sky is blue. ...
    What is the pass key? The pass key is

The filler's end is cut at a word boundary (the authors cut at characters), so the prompt can be
sized to within a token or two of its budget; the needle goes in at the sentence boundary nearest
its depth, the fraction of filler words before it. Lengths count the evaluated model's tokens,
special tokens and chat template (tokens.PromptFrame) included: every prompt has at most
`length - gen_budget` tokens and, for any sane tokenizer, at least 99% of that.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data.tokens import (
    PromptFrame,
    check_length_args,
    doc_rng,
    fit_documents,
    spread_fractions,
)

INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize them. I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"

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
DEFAULT_NUM_DOCS = 100
DEFAULT_GEN_BUDGET = 8
PLAIN = PromptFrame()  # the prompt exactly as written (no chat template)

_WORDS = tuple(FILLER.split(" "))
_CYCLE_CHARS = len(FILLER) + 1  # one cycle of the filler plus the joining space
_WORD_OFFSETS = tuple(sum(len(w) + 1 for w in _WORDS[:i]) for i in range(len(_WORDS)))
# Word indices (within one cycle of the filler) that start a sentence: 0, 4, 8, 12, 15.
_SENTENCE_STARTS = tuple(i for i in range(len(_WORDS)) if i == 0 or _WORDS[i - 1].endswith("."))


def needle(passkey: str | int) -> str:
    return f"The pass key is {passkey}. Remember it. {passkey} is the pass key."


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


def render(passkey: str | int, filler_words: int, needle_at: int) -> str:
    """The prompt with `filler_words` filler words, the needle after the first `needle_at` of them."""
    needle_at = min(max(needle_at, 0), filler_words)
    parts = [INTRO, filler_text(0, needle_at), needle(passkey), filler_text(needle_at, filler_words), QUESTION]
    return "\n".join(part for part in parts if part)


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


def build_passkey_docs(
    tokenizer: Any,
    length: int,
    num_docs: int = DEFAULT_NUM_DOCS,
    seed: int = 0,
    gen_budget: int = DEFAULT_GEN_BUDGET,
    frame: PromptFrame = PLAIN,
) -> list[dict[str, Any]]:
    """`num_docs` passkey prompts of at most `length - gen_budget` tokens of `tokenizer`.

    Deterministic in (tokenizer, length, num_docs, seed, gen_budget, frame). Pass keys are seeded
    5-digit numbers; needle depths cover [0, 1) evenly across the documents (and across any
    prefix of them). `frame` is the chat template (if any) the prompt will be sent in; its tokens
    count. Each document: input, passkey (str), depth, needle_word, filler_words, n_tokens
    (framed), length, index.
    """
    length, num_docs, gen_budget = int(length), int(num_docs), int(gen_budget)
    check_length_args(length, num_docs, gen_budget)
    rngs = [doc_rng("passkey", seed, length, i) for i in range(num_docs)]
    passkeys = [str(rng.randint(10000, 99999)) for rng in rngs]
    depths = spread_fractions([rng.random() for rng in rngs])

    def text(i: int, n: int) -> str:
        return render(passkeys[i], n, needle_position(depths[i], n))

    fitted = fit_documents(tokenizer, frame, text, num_docs, length - gen_budget, 20 * len(_WORDS), "passkey document")
    docs = []
    for i, (n_words, prompt, tokens) in enumerate(fitted):
        at = needle_position(depths[i], n_words)
        docs.append(
            {
                "input": prompt,
                "passkey": passkeys[i],
                "depth": round(at / n_words, 4) if n_words else 0.0,
                "needle_word": at,
                "filler_words": n_words,
                "n_tokens": tokens,
                "length": length,
                "index": i,
            }
        )
    return docs


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
