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

from typing import Any

from qk_ablate.task_data.filler import CYCLE_WORDS, filler_text, needle_position
from qk_ablate.task_data.scoring import first_output, passkey_correct
from qk_ablate.task_data.settings import length_dataset
from qk_ablate.task_data.tokens import (
    PLAIN,
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
QUESTION = "What is the pass key? The pass key is"

DEFAULT_NUM_DOCS = 100
DEFAULT_GEN_BUDGET = 8


def needle(passkey: str | int) -> str:
    return f"The pass key is {passkey}. Remember it. {passkey} is the pass key."


def render(passkey: str | int, filler_words: int, needle_at: int) -> str:
    """The prompt with `filler_words` filler words, the needle after the first `needle_at` of them."""
    needle_at = min(max(needle_at, 0), filler_words)
    parts = [INTRO, filler_text(0, needle_at), needle(passkey), filler_text(needle_at, filler_words), QUESTION]
    return "\n".join(part for part in parts if part)


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

    fitted = fit_documents(tokenizer, frame, text, num_docs, length - gen_budget, 20 * CYCLE_WORDS, "passkey document")
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


# --- lm-eval hooks (named by tasks/passkey/*.yaml with !function) -----------------------------


def passkey_dataset(passkey_length: int | str, passkey_gen_budget: int = DEFAULT_GEN_BUDGET, **metadata: Any) -> dict:
    """custom_dataset for passkey_{len}: `passkey_length` and the budget come from dataset_kwargs."""
    return length_dataset(build_passkey_docs, passkey_length, passkey_gen_budget, DEFAULT_NUM_DOCS, metadata)


def passkey_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"acc": float(passkey_correct(first_output(results), doc["passkey"]))}
