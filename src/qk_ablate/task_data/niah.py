"""RULER-style needle-in-a-haystack documents (Hsieh et al., "RULER", 2024), at exact lengths.

`niah_{len}` follows RULER's niah_single_1 (noise haystack, a word key, a 7-digit value);
`niah_multikey_{len}` hides distractor needles (other keys, other values) next to the target;
`niah_essay_{len}` puts the needle in an essay haystack (haystack.EssayHaystack; RULER's
niah_single_2). Prompt layout (RULER's template; the haystack's sentences and the needles joined by spaces)::

    Some special magic numbers are hidden within the following text. Make sure to memorize it. ...
    The grass is green. The sky is blue. ... One of the special magic numbers for brave-lantern is: 4817263. The ...
    What is the special magic number for brave-lantern mentioned in the provided text? The special magic number for brave-lantern mentioned in the provided text is

Keys are adjective-noun pairs from small fixed word lists (no `wonderwords`), values seeded
7-digit numbers; within a document all keys and all values are distinct. The target needle's
depth is spread over the whole context across documents (`tokens.spread_fractions`); distractor
depths are seeded uniform draws. Needles go in at sentence starts of the haystack. Lengths count
the evaluated model's tokens, special tokens and chat template (tokens.PromptFrame) included:
every prompt has at most `length - gen_budget` tokens and at least 99% of that.
"""

from __future__ import annotations

import random
import re
from typing import Any

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data.haystack import (
    DEFAULT_ESSAY_COLUMN,
    DEFAULT_ESSAY_HUB,
    Haystack,
    NoiseHaystack,
    essay_haystack,
)
from qk_ablate.task_data.lengths import LENGTHS
from qk_ablate.task_data.scoring import NUMBER, first_output
from qk_ablate.task_data.settings import length_dataset
from qk_ablate.task_data.tokens import (
    PLAIN,
    PromptFrame,
    check_length_args,
    doc_rng,
    fit_documents,
    spread_fractions,
)

__all__ = ["LENGTHS", "build_niah_docs", "niah_correct", "first_magic_number"]

INTRO = (
    "Some special magic numbers are hidden within the following text. "
    "Make sure to memorize it. I will quiz you about the numbers afterwards."
)
QUESTION = (
    "What is the special magic number for {key} mentioned in the provided text? "
    "The special magic number for {key} mentioned in the provided text is"
)
NOISE = NoiseHaystack()
DEFAULT_NUM_DOCS = 100
DEFAULT_GEN_BUDGET = 12
DEFAULT_NUM_DISTRACTORS = 3  # RULER's niah_multikey uses 4 needles in all

# Small fixed word lists: 40 x 40 = 1600 keys. No noun is a prefix of another, so a key never
# occurs inside another key.
ADJECTIVES = (
    "ancient",
    "bitter",
    "brave",
    "bright",
    "calm",
    "clever",
    "cold",
    "crimson",
    "curious",
    "dusty",
    "eager",
    "early",
    "fancy",
    "fierce",
    "gentle",
    "golden",
    "grumpy",
    "hidden",
    "hollow",
    "humble",
    "icy",
    "jolly",
    "kind",
    "lazy",
    "lively",
    "lonely",
    "lucky",
    "misty",
    "noble",
    "odd",
    "proud",
    "quiet",
    "rapid",
    "rusty",
    "silent",
    "silver",
    "sleepy",
    "tiny",
    "wild",
    "witty",
)
NOUNS = (
    "anchor",
    "badger",
    "banjo",
    "beacon",
    "canyon",
    "castle",
    "comet",
    "copper",
    "dragon",
    "falcon",
    "feather",
    "garden",
    "glacier",
    "harbor",
    "helmet",
    "island",
    "jacket",
    "kettle",
    "lantern",
    "ledger",
    "magnet",
    "meadow",
    "mirror",
    "needle",
    "orchard",
    "otter",
    "parrot",
    "pebble",
    "pillow",
    "quarry",
    "raven",
    "saddle",
    "spider",
    "teapot",
    "thistle",
    "tunnel",
    "violin",
    "walrus",
    "window",
    "zephyr",
)


def needle(key: str, value: str | int) -> str:
    return f"One of the special magic numbers for {key} is: {value}."


def question(key: str) -> str:
    return QUESTION.format(key=key)


def render(
    needles: list[tuple[str, str]],
    target_key: str,
    filler_words: int,
    positions: list[int],
    haystack: Haystack = NOISE,
) -> str:
    """The prompt: `filler_words` haystack words, needle j after the first `positions[j]` of them."""
    order = sorted(range(len(needles)), key=lambda j: (positions[j], j))
    parts: list[str] = []
    at = 0
    for j in order:
        pos = min(max(positions[j], 0), filler_words)
        parts.append(haystack.text(at, pos))
        parts.append(needle(*needles[j]))
        at = pos
    parts.append(haystack.text(at, filler_words))
    context = " ".join(part for part in parts if part)
    return "\n".join([INTRO, context, question(target_key)])


def _draw_needles(rng: random.Random, count: int) -> list[tuple[str, str]]:
    keys: list[str] = []
    values: list[str] = []
    while len(keys) < count:
        key = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
        if key not in keys:
            keys.append(key)
    while len(values) < count:
        value = str(rng.randint(1_000_000, 9_999_999))
        if value not in values:
            values.append(value)
    return list(zip(keys, values))


def build_niah_docs(
    tokenizer: Any,
    length: int,
    num_docs: int = DEFAULT_NUM_DOCS,
    seed: int = 0,
    gen_budget: int = DEFAULT_GEN_BUDGET,
    num_distractors: int = 0,
    frame: PromptFrame = PLAIN,
    haystack: Haystack = NOISE,
) -> list[dict[str, Any]]:
    """`num_docs` NIAH prompts of at most `length - gen_budget` tokens of `tokenizer` (inside `frame`).

    `num_distractors` = 0 is niah_single_1; more gives the multikey variant. `haystack` is RULER's
    noise (default) or an `EssayHaystack` (niah_essay). Deterministic in all arguments. Each document: input, key, value, depth (of the target), distractors (list of
    {key, value, depth}), filler_words, n_tokens, length, index.
    """
    length, num_docs, gen_budget, num_distractors = int(length), int(num_docs), int(gen_budget), int(num_distractors)
    check_length_args(length, num_docs, gen_budget)
    if num_distractors < 0 or num_distractors > 50:
        raise QKAblateError(f"num_distractors must be between 0 and 50, got {num_distractors}")
    variant = "niah" if num_distractors == 0 else f"niah_multikey{num_distractors}"
    if haystack.name != "noise":
        variant += "_essay"

    rngs = [doc_rng(variant, seed, length, i) for i in range(num_docs)]
    needles = [_draw_needles(rng, 1 + num_distractors) for rng in rngs]  # needle 0 is the target
    jitters = [rng.random() for rng in rngs]
    other_depths = [[rng.random() for _ in range(num_distractors)] for rng in rngs]
    target_depths = spread_fractions(jitters)
    depths = [[target_depths[i], *other_depths[i]] for i in range(num_docs)]

    def text(i: int, n: int) -> str:
        return render(needles[i], needles[i][0][0], n, [haystack.place(d, n) for d in depths[i]], haystack)

    fitted = fit_documents(tokenizer, frame, text, num_docs, length - gen_budget, 20 * 17, "NIAH document")
    docs = []
    for i, (n_words, prompt, tokens) in enumerate(fitted):
        placed = [haystack.place(d, n_words) / n_words if n_words else 0.0 for d in depths[i]]
        docs.append(
            {
                "input": prompt,
                "key": needles[i][0][0],
                "value": needles[i][0][1],
                "depth": round(placed[0], 4),
                "distractors": [
                    {"key": k, "value": v, "depth": round(placed[j + 1], 4)} for j, (k, v) in enumerate(needles[i][1:])
                ],
                "filler_words": n_words,
                "n_tokens": tokens,
                "length": length,
                "index": i,
            }
        )
    return docs


# --- scoring --------------------------------------------------------------------------------

_SEVEN = re.compile(r"^\d{7}$")


def first_magic_number(output: str) -> str | None:
    """The first 7-digit number in `output` as written (thousands separators removed, sign and
    decimal part kept, so "-1234567" and "1234567.5" never equal a value); None if none.

    Numbers are read whole: "12345678" is an 8-digit number, not a 7-digit hit.
    """
    for match in NUMBER.finditer(output or ""):
        number = match.group(0).replace(",", "")
        digits = number.lstrip("-").split(".")[0]
        if _SEVEN.match(digits):
            return number
    return None


def niah_correct(output: str, value: str | int) -> bool:
    """True when the first 7-digit whole number in `output` is exactly `value`."""
    found = first_magic_number(output)
    return found is not None and found == str(value).strip()


# --- lm-eval hooks (named by tasks/niah/*.yaml with !function) --------------------------------


def niah_dataset(
    niah_length: int | str,
    niah_gen_budget: int = DEFAULT_GEN_BUDGET,
    niah_distractors: int = 0,
    niah_haystack: str | None = None,
    niah_essay_dir: str | None = None,
    **metadata,
):
    """custom_dataset for niah_{len}, niah_multikey_{len} and niah_essay_{len}.

    Per-task constants come from dataset_kwargs. The essay haystack is the folder
    `niah_essay_dir` (dataset_kwargs, for a user's own task) or `essay_dir` (run metadata), else
    the Hub dataset `essay_hub` (column `essay_column`). `niah_haystack` defaults to "essay" when
    `niah_essay_dir` is given, to "noise" otherwise.
    """
    if niah_haystack is None:
        niah_haystack = "essay" if niah_essay_dir else "noise"
    if niah_haystack == "noise":
        haystack: Haystack = NOISE
    elif niah_haystack == "essay":
        haystack = essay_haystack(
            niah_essay_dir or metadata.get("essay_dir") or None,
            str(metadata.get("essay_hub") or DEFAULT_ESSAY_HUB),
            str(metadata.get("essay_column") or DEFAULT_ESSAY_COLUMN),
        )
    else:
        raise QKAblateError(f"niah_haystack must be 'noise' or 'essay', got {niah_haystack!r}")
    return length_dataset(
        build_niah_docs,
        niah_length,
        niah_gen_budget,
        DEFAULT_NUM_DOCS,
        metadata,
        num_distractors=int(niah_distractors),
        haystack=haystack,
    )


def niah_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"acc": float(niah_correct(first_output(results), doc["value"]))}
