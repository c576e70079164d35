"""Does a task's baseline carry signal? Two exact tests on its per-document scores and answers.

* Chance: a one-sided binomial test of the baseline's correct count against the task's chance
  level (the accuracy of a blind guess: 0.5 for a two-way choice, 0 for an open answer; see
  `catalogue.task_chance`). p = P(X >= k) for X ~ Binomial(n, chance).
* A constant answer: the baseline's most common answer, its share of the documents, and what
  always giving that answer would score on the same documents. The baseline is compared with that
  constant document by document (an exact one-sided sign test on the documents where the two
  differ), so a model that answers "False" to every statement of a balanced set, or "positive" to
  every review, is caught even when its accuracy sits a little above one half.

A task whose baseline is not better than chance, or not better than its own most common answer
(p >= `ALPHA` in either test), is flagged: its deltas measure nothing. The same two tests run on
every intervention's row too (`assess` with the row's label), where a flag says the intervention
brought the task down to chance or to one answer: its delta stands, and the report says so beside
it. Answers are read from lm-eval's sample records (`read_answer`): a generation's first line,
normalised as the fact tasks normalise names; a multiple-choice answer is the choice of highest
log-likelihood (what `acc` scores). Records without a readable answer (old or foreign formats) skip the
second test only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from qk_ablate.task_data.scoring import answer_candidates, normalize_name

ALPHA = 0.05
MARK = "†"  # in a report: a task whose baseline carries no signal
ROW_MARK = "‡"  # in a report: a task an intervention's row answers at chance or with one answer

Answer = tuple[str, tuple[str, ...]]  # (what the model answered, the answers its document accepts)


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly (summed in log space)."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)
        for i in range(k, n + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(x - top) for x in logs))


def _label(value: Any, choices: Sequence[str] | None) -> str:
    if isinstance(value, str) and value.strip().isdigit():  # lm_eval's CLI writes the gold index as text
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return normalize_name(str(value))
    return normalize_name(choices[value]) if choices and 0 <= value < len(choices) else str(value)


def read_answer(record: dict[str, Any], choices: Sequence[str] | None = None) -> Answer | None:
    """What one lm-eval sample record answered, and what its document accepts (its target, and
    the document's `aliases` when it lists them), both normalised; None when there is no answer.

    A generation (`filtered_resps` holds a string) answers its first line; a multiple-choice
    record (one [log-likelihood, is_greedy] pair per choice) answers its most likely choice,
    named by `choices` (the task's `doc_to_choice` list, or the document's own list) when known.
    """
    try:
        resps, target = record.get("filtered_resps"), record.get("target")
        doc = record.get("doc")
        if not isinstance(doc, dict):
            doc = {}
        if isinstance(choices, str):  # doc_to_choice names a field of the document
            choices = doc.get(choices) if isinstance(doc.get(choices), list) else None
        if isinstance(resps, list) and resps and isinstance(resps[0], str):
            lines = answer_candidates(resps[0])
            answer = normalize_name(lines[0]) if lines else ""
            targets = target if isinstance(target, list) else [target]
            aliases = doc.get("aliases")
            if not isinstance(aliases, list):
                aliases = []
            accepted = {normalize_name(str(t)) for t in [*targets, *aliases] if t is not None}
            return answer, tuple(sorted(accepted))
        if isinstance(resps, list) and len(resps) >= 2 and all(isinstance(r, list) and r for r in resps):
            best = max(range(len(resps)), key=lambda i: float(resps[i][0]))
            golds = target if isinstance(target, list) else [target]
            return _label(best, choices), tuple(sorted({_label(g, choices) for g in golds}))
    except (TypeError, ValueError, IndexError, KeyError):
        pass
    return None


@dataclass(frozen=True)
class Signal:
    """How one task's baseline compares with a blind guess and with its own most common answer."""

    task: str
    model: str
    n: int
    accuracy: float
    chance: float | None = None
    p_chance: float | None = None  # one-sided binomial, baseline > chance
    top_answer: str | None = None
    top_share: float | None = None  # of the documents
    constant_accuracy: float | None = None  # what always answering `top_answer` scores
    p_constant: float | None = None  # one-sided sign test, baseline > that constant
    kind: str | None = None  # the mean it belongs to (contextual, parametric; None: neither)
    counted: bool = False  # flagged, but counted in its kind's mean all the same (`--keep-no-signal`)
    label: str = "baseline"  # the row tested: the baseline, or an intervention's label

    @property
    def flagged(self) -> bool:
        return any(p is not None and p >= ALPHA for p in (self.p_chance, self.p_constant))

    def failures(self) -> str:
        """What the accuracy cannot be told apart from: chance, a constant answer, or both, with p."""
        top = f'"{self.top_answer or "(empty)"}"'
        fails = []
        if self.p_chance is not None and self.p_chance >= ALPHA:
            assert self.chance is not None  # `assess` tests against chance only when it is known
            fails.append(f"chance ({100 * self.chance:.1f}%, one-sided binomial p = {self.p_chance:.2g})")
        if self.p_constant is not None and self.p_constant >= ALPHA:
            assert self.top_share is not None and self.constant_accuracy is not None  # set with p_constant
            fails.append(
                f"always answering {top} ({100 * self.top_share:.0f}% of its answers; that constant would "
                f"score {100 * self.constant_accuracy:.1f}%, sign test p = {self.p_constant:.2g})"
            )
        return f"{100 * self.accuracy:.1f}% is not distinguishable from {' nor from '.join(fails)}"

    def sentence(self) -> str:
        """One sentence for a report's footnote: the task, which test it fails, p and the top share."""
        top = f'"{self.top_answer or "(empty)"}"'
        text = f"{self.task} ({self.model} {self.label}, {self.n} documents): {self.failures()}"
        if self.top_share is not None and not (self.p_constant is not None and self.p_constant >= ALPHA):
            text += f"; its most common answer, {top}, is {100 * self.top_share:.0f}% of its answers"
        if self.kind and self.counted:
            text += f"; it is counted in the {self.kind} mean all the same (--keep-no-signal)"
        elif self.kind:
            text += f"; it is left out of the {self.kind} mean and the interaction (--keep-no-signal counts it)"
        return text


def assess(
    task: str,
    model: str,
    scores: Iterable[float],
    answers: Sequence[Answer | None] | None,
    chance: float | None,
    kind: str | None = None,
    counted: bool = False,
    label: str = "baseline",
) -> Signal:
    """The two tests on one task of one row (`scores` per document; `answers` from `read_answer`)."""
    values = [float(s) for s in scores]
    n = len(values)
    accuracy = sum(values) / n if n else 0.0
    binary = all(v in (0.0, 1.0) for v in values)
    p_chance = binomial_tail(int(sum(values)), n, chance) if chance is not None and binary and n else None
    if not n or not answers or len(answers) != n or any(a is None for a in answers):
        return Signal(task, model, n, accuracy, chance, p_chance, kind=kind, counted=counted, label=label)
    counts = Counter(a[0] for a in answers)  # type: ignore[index]
    top, count = min(counts.items(), key=lambda item: (-item[1], item[0]))
    constant = [float(top in a[1]) for a in answers]  # type: ignore[index]
    wins = sum(v > c for v, c in zip(values, constant))
    losses = sum(v < c for v, c in zip(values, constant))
    return Signal(
        task,
        model,
        n,
        accuracy,
        chance,
        p_chance,
        top,
        count / n,
        sum(constant) / n,
        binomial_tail(wins, wins + losses, 0.5) if wins + losses else 1.0,
        kind,
        counted,
        label,
    )
