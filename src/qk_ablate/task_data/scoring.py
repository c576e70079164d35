"""Scoring of free-form generations: plain functions, strict on purpose, unit-tested on outputs.

* `passkey_correct`: the first number in the output must be the pass key, as a whole number
  ("123456" does not contain a hit for 12345; "12,345" is the same number as "12345").
* `country_correct`: the first line of the output, normalised, must equal one of the accepted
  names of the country ("Japan." is right; "Not Japan", "Japan or China", "Tokyo, Japan" are not).
* `read_verdict`: a generated true/false judgment, read from its first word only ("No, that is
  not correct" is False: the parser Jin et al. used read "correct" in it as yes).
* `recall_scores`: the built-in recall tasks score each answer twice, by the same reading rule:
  `acc` (the right name) and `well_formed` (a name of the asked kind at all: any country, any
  capital or city, any continent), so a lost answer *format* shows apart from a lost *fact*.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable
from typing import Any

# A number as a model writes it: optional sign, digits with optional thousands separators, an
# optional decimal part. The look-behind keeps us from starting inside a longer digit run.
NUMBER = re.compile(r"(?<![\d])-?\d+(?:,\d{3})*(?:\.\d+)?")


def first_number(text: str) -> str | None:
    """The first number in `text` as written, with thousands separators removed; None if none."""
    match = NUMBER.search(text or "")
    if match is None:
        return None
    return match.group(0).replace(",", "")


def passkey_correct(output: str, passkey: str | int) -> bool:
    """True when the first number in `output` is exactly the pass key (a whole number, no sign)."""
    found = first_number(output)
    return found is not None and found == str(passkey).strip()


def normalize_name(text: str) -> str:
    """Normalise a place name for comparison.

    Accents are removed (Côte -> cote), case folded, "&" read as "and", apostrophes and dots
    dropped (U.S.A. -> usa, d'Ivoire -> divoire), every other non-alphanumeric character is a
    space, spaces collapsed, and one leading article "the" dropped (The Netherlands -> netherlands).
    """
    text = unicodedata.normalize("NFKD", text or "")
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.casefold().replace("&", " and ")
    text = re.sub(r"['’‘`´.]", "", text)
    text = re.sub(r"[^0-9a-z]+", " ", text).strip()
    if text.startswith("the "):
        text = text[4:]
    return text


# A sentence end inside the first line: a period after two lower-case letters, then a space
# ("Japan. It is..." splits; "U.S. city" does not).
_SENTENCE_END = re.compile(r"(?<=[a-z]{2})\.\s")


def answer_candidates(output: str) -> list[str]:
    """What a free-form answer may be read as: its first line, and that line's first sentence."""
    lines = [line for line in (output or "").strip().splitlines() if line.strip()]
    if not lines:
        return []
    first = lines[0].strip()
    candidates = [first]
    split = _SENTENCE_END.split(first, maxsplit=1)
    if len(split) > 1 and split[0].strip():
        candidates.append(split[0].strip())
    return candidates


def country_correct(output: str, aliases: Iterable[str]) -> bool:
    """True when the answer (first line, or its first sentence) is one of the country's names."""
    accepted = {normalize_name(alias) for alias in aliases}
    accepted.discard("")
    return any(normalize_name(candidate) in accepted for candidate in answer_candidates(output))


_VERDICT_WORDS = {
    "true": True,
    "yes": True,
    "correct": True,
    "right": True,
    "false": False,
    "no": False,
    "not": False,
    "incorrect": False,
    "wrong": False,
}


def read_verdict(output: str) -> bool | None:
    """The verdict that the first word of the answer gives (True, False), or None if it gives none.

    Only the first word counts, so a negation is never skipped over: "No, that is not correct",
    "Not true" and "Incorrect." are False; "True." and "Yes, it is." are True; "It is true",
    "Maybe" and an empty answer are None (scored wrong).
    """
    words = re.findall(r"[a-z]+", (output or "").strip().casefold())
    return _VERDICT_WORDS.get(words[0]) if words else None


def first_output(results: Any) -> str:
    """The generated text lm-eval hands a `process_results` hook (a list of one string)."""
    if isinstance(results, (list, tuple)):
        return str(results[0]) if results else ""
    return str(results)


def alias_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Fact tasks (city_facts, country_capital, country_continent, a user's facts CSV): the first
    line of the answer, or its first sentence, must be one of `doc["aliases"]`, normalised."""
    return {"acc": float(country_correct(first_output(results), doc["aliases"]))}


def names_one_of(output: str, names: Collection[str]) -> bool:
    """True when the answer (first line, or its first sentence), normalised, is in `names`
    (a collection of names already normalised with `normalize_name`)."""
    return any(normalize_name(candidate) in names for candidate in answer_candidates(output))


def recall_scores(output: str, aliases: Iterable[str], well_formed: Collection[str]) -> dict[str, float]:
    """The two scores of a recall answer: `acc` (one of the document's `aliases`; the primary
    metric, unchanged) and `well_formed` (any name in `well_formed`, normalised: an answer of the
    right kind, right or wrong). `acc` first: reports read a sample's first metric."""
    return {"acc": float(country_correct(output, aliases)), "well_formed": float(names_one_of(output, well_formed))}
