"""RULER-style question answering over invented documents, at exact lengths (`ctxqa_{len}`).

RULER's QA tasks pad a SQuAD/HotpotQA paragraph with other paragraphs; a model may know those
answers from pre-training. Here every document describes an invented place (invented name,
river, founder, product; a founding year), so the answer can only come from the prompt, and
the question names exactly one document. Prompt layout (RULER's QA template)::

    Answer the question based on the given documents. Only give me the answer and do not output any other words.

    The following are given documents.

    Document 1:
    Velmoran is a fishing village on the banks of the river Ostrel. It was founded in 1743 by Mirela Duvan. ...

    Document 2:
    ...

    Answer the question based on the given documents. Only give me the answer and do not output any other words.

    Question: Who founded Velmoran? Answer: Velmoran was founded by

Distractor documents fill the context to the exact token budget (the last one cut at a word
boundary); the target document sits at a seeded depth spread over the whole context across
documents. Within a prompt, every name, river, founder's surname and product is distinct, and no
other document has the target's year, so the first candidate answer in the output decides the score.
"""

from __future__ import annotations

import random
import re
from bisect import bisect_right
from typing import Any

from qk_ablate.task_data.lengths import LENGTHS
from qk_ablate.task_data.scoring import first_output
from qk_ablate.task_data.settings import length_dataset
from qk_ablate.task_data.tokens import (
    PLAIN,
    PromptFrame,
    check_length_args,
    doc_rng,
    fit_documents,
    spread_fractions,
)

__all__ = ["LENGTHS", "build_ctxqa_docs", "ctxqa_correct"]

INSTRUCTION = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other words."
)
DEFAULT_NUM_DOCS = 100
DEFAULT_GEN_BUDGET = 16

# Invented words are syllable chains; the syllables avoid common English words.
_ONSETS = ("b", "br", "d", "dr", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "tr", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "l", "r", "s")
KINDS = (
    "fishing village",
    "mountain town",
    "river port",
    "market town",
    "monastery",
    "observatory",
    "weaving guild",
    "salt mine",
    "lighthouse settlement",
    "trading post",
    "vineyard estate",
    "glassworks",
)
_FILLER = (
    "Visitors often remark on its narrow streets and old stone bridges.",
    "Most of its people work in small family workshops.",
    "A weekly market fills the central square every spring.",
    "Its archives were rebuilt after a long and difficult winter.",
    "Travellers reach it by a winding road through the hills.",
    "The local council meets in a hall built of grey timber.",
    "Children there learn an old song about the first harvest.",
    "Its library keeps maps drawn by early surveyors.",
)
QUESTIONS = {
    "founder": "Who founded {name}?",
    "year": "In which year was {name} founded?",
    "product": "What is the best-known product of {name}?",
    "river": "On which river does {name} lie?",
}
# The answer is prompted as the start of a sentence, as passkey ("The pass key is") and RULER's
# NIAH templates do: after a bare "Answer:" small models tend to emit a newline first.
ANSWER_PREFIXES = {
    "founder": "{name} was founded by",
    "year": "{name} was founded in the year",
    "product": "The best-known product of {name} is",
    "river": "{name} lies on the river",
}
ATTRIBUTES = tuple(QUESTIONS)


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))


class _Inventor:
    """Draws invented facts with every value unique within one prompt."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()
        self.target_year: str | None = None  # years repeat at long lengths, but never the target's

    def _fresh(self, make) -> str:
        while True:
            value = make()
            if value.casefold() not in self.used:
                self.used.add(value.casefold())
                return value

    def entity(self) -> dict[str, str]:
        rng = self.rng
        name = self._fresh(lambda: _word(rng, rng.choice((2, 3))).capitalize())
        river = self._fresh(lambda: _word(rng, 2).capitalize())
        founder = f"{_word(rng, 2).capitalize()} {self._fresh(lambda: _word(rng, 2).capitalize())}"  # unique surname
        product = self._fresh(lambda: _word(rng, 3))
        year = str(rng.randint(1200, 1899))
        while year == self.target_year:
            year = str(rng.randint(1200, 1899))
        if self.target_year is None:
            self.target_year = year
        kind = rng.choice(KINDS)
        filler = rng.sample(_FILLER, 2)
        return {
            "name": name,
            "river": river,
            "founder": founder,
            "product": product,
            "year": year,
            "text": (
                f"{name} is {'an' if kind[0] in 'aeiou' else 'a'} {kind} on the banks of the river {river}. {filler[0]} "
                f"It was founded in {year} by {founder}. Its best-known product is {product}, "
                f"which traders carry to distant markets. {filler[1]}"
            ),
        }


def _render(bodies: list[str], question: str, prefix: str) -> str:
    context = "\n\n".join(f"Document {j + 1}:\n{body}" for j, body in enumerate(bodies))
    return (
        f"{INSTRUCTION}\n\nThe following are given documents.\n\n{context}\n\n{INSTRUCTION}\n\n"
        f"Question: {question} Answer: {prefix}"
    )


class _Prompt:
    """One prompt's target document and its endless, lazily drawn distractor stream."""

    def __init__(self, rng: random.Random, depth: float) -> None:
        self.inventor = _Inventor(rng)
        self.target = self.inventor.entity()
        self.attribute = rng.choice(ATTRIBUTES)
        self.question = QUESTIONS[self.attribute].format(name=self.target["name"])
        self.prefix = ANSWER_PREFIXES[self.attribute].format(name=self.target["name"])
        self.depth = depth
        self.distractors: list[dict[str, str]] = []
        self.words: list[list[str]] = []
        self.ends: list[int] = []  # cumulative word counts

    def _cover(self, n_words: int) -> None:
        while not self.ends or self.ends[-1] < n_words:
            entity = self.inventor.entity()
            self.distractors.append(entity)
            self.words.append(entity["text"].split(" "))
            self.ends.append((self.ends[-1] if self.ends else 0) + len(self.words[-1]))

    def layout(self, n_words: int) -> tuple[list[str], int, int]:
        """(document bodies, index of the target, distractors shown) with `n_words` distractor words."""
        self._cover(n_words)
        full = bisect_right(self.ends, n_words)
        bodies = [entity["text"] for entity in self.distractors[:full]]
        rest = n_words - (self.ends[full - 1] if full else 0)
        if rest > 0:
            bodies.append(" ".join(self.words[full][:rest]))
        at = min(round(self.depth * len(bodies)), full)
        bodies.insert(at, self.target["text"])
        return bodies, at, len(bodies) - 1

    def text(self, n_words: int) -> str:
        return _render(self.layout(n_words)[0], self.question, self.prefix)


def build_ctxqa_docs(
    tokenizer: Any,
    length: int,
    num_docs: int = DEFAULT_NUM_DOCS,
    seed: int = 0,
    gen_budget: int = DEFAULT_GEN_BUDGET,
    frame: PromptFrame = PLAIN,
) -> list[dict[str, Any]]:
    """`num_docs` QA prompts of at most `length - gen_budget` tokens of `tokenizer` (inside `frame`).

    Deterministic in all arguments. Each document: input, question, name (of the target
    document's place), attribute (founder, year,
    product or river), answer, aliases (accepted answers), distractor_answers (the same
    attribute of every other document shown), depth (target document index / documents),
    num_documents, filler_words, n_tokens, length, index.
    """
    length, num_docs, gen_budget = int(length), int(num_docs), int(gen_budget)
    check_length_args(length, num_docs, gen_budget)
    rngs = [doc_rng("ctxqa", seed, length, i) for i in range(num_docs)]
    jitters = [rng.random() for rng in rngs]
    prompts = [_Prompt(rng, depth) for rng, depth in zip(rngs, spread_fractions(jitters))]

    fitted = fit_documents(
        tokenizer, frame, lambda i, n: prompts[i].text(n), num_docs, length - gen_budget, 400, "ctxqa document"
    )
    docs = []
    for i, (n_words, text, tokens) in enumerate(fitted):
        prompt = prompts[i]
        bodies, at, shown = prompt.layout(n_words)
        attribute = prompt.attribute
        others = [entity[attribute] for entity in prompt.distractors[:shown]]
        docs.append(
            {
                "input": text,
                "question": prompt.question,
                "answer_prefix": prompt.prefix,
                "name": prompt.target["name"],
                "attribute": attribute,
                "answer": prompt.target[attribute],
                "aliases": answer_aliases(attribute, prompt.target[attribute]),
                "distractor_answers": others,
                "depth": round(at / len(bodies), 4),
                "num_documents": len(bodies),
                "filler_words": n_words,
                "n_tokens": tokens,
                "length": length,
                "index": i,
            }
        )
    return docs


# --- scoring --------------------------------------------------------------------------------


def answer_aliases(attribute: str, answer: str) -> list[str]:
    """Accepted forms of an answer: a founder may be named by the full name or the surname."""
    if attribute == "founder":
        return [answer, answer.split(" ")[-1]]
    return [answer]


def _first_line(output: str) -> str:
    for line in (output or "").splitlines():
        if line.strip():
            return line
    return ""


def _earliest(line: str, phrases: list[str]) -> int:
    best = -1
    for phrase in phrases:
        match = re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", line, flags=re.IGNORECASE)
        if match and (best < 0 or match.start() < best):
            best = match.start()
    return best


def ctxqa_correct(output: str, attribute: str, aliases: list[str], distractor_answers: list[str]) -> bool:
    """True when the first candidate answer in the output's first line is the target's.

    Candidates are the target's accepted forms and the same attribute of every other document
    in the prompt, read as whole words; years are read as whole numbers (the first one counts).
    """
    line = _first_line(output)
    if attribute == "year":
        years = re.findall(r"(?<![\d.,])\d+(?![\d])", line)
        return bool(years) and years[0] in aliases
    hit = _earliest(line, list(aliases))
    if hit < 0:
        return False
    others = [form for value in distractor_answers for form in answer_aliases(attribute, value)]
    other = _earliest(line, others)
    return other < 0 or hit < other


# --- lm-eval hooks (named by tasks/ctxqa/*.yaml with !function) -------------------------------


def ctxqa_dataset(ctxqa_length: int | str, ctxqa_gen_budget: int = DEFAULT_GEN_BUDGET, **metadata):
    """custom_dataset for ctxqa_{len}; the length and budget come from dataset_kwargs."""
    return length_dataset(build_ctxqa_docs, ctxqa_length, ctxqa_gen_budget, DEFAULT_NUM_DOCS, metadata)


def ctxqa_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    correct = ctxqa_correct(first_output(results), doc["attribute"], doc["aliases"], doc["distractor_answers"])
    return {"acc": float(correct)}
