"""Answer-prior collapse: does a row's accuracy come from knowing, or from giving one answer often?

A destroyed model can keep part of its accuracy on a short-answer task by answering the most
common gold answer ("China" for cities) or the last few-shot answer everywhere. Per row (a run)
and task, from lm-eval's sample records (`baseline_signal.read_answer`): the most frequent answer
and its share of the documents, the entropy of the answers (bits; 0 for one constant answer), the
accuracy on the documents whose gold answer is not that most frequent answer, and the share of
the correct documents that were answered with it. A row is flagged when at least `MIN_CORRECT`
documents are correct and its accuracy where the gold answer is another is less than half its
accuracy overall: its accuracy comes mostly from the answer prior, not from the documents. (A model
that knows its answers scores alike on both; one that is right "by China" scores far lower off it.
The share of correct answers alone would flag a perfect model on a set whose gold leans one way.)
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from qk_ablate.stats.runs import Run

MIN_CORRECT = 3  # fewer correct documents than this say nothing about where accuracy comes from


@dataclass(frozen=True)
class AnswerPrior:
    model: str
    intervention: str
    task: str
    n: int
    top_answer: str
    top_share: float  # of the documents
    entropy: float  # bits, over the answers given
    accuracy: float
    off_top_accuracy: float | None  # on documents whose gold is not the top answer (None: there are none)
    top_of_correct: float | None  # share of the correct documents answered with the top answer (None: none correct)

    @property
    def flagged(self) -> bool:
        correct = round(self.accuracy * self.n)
        off = self.off_top_accuracy
        return correct >= MIN_CORRECT and off is not None and off < self.accuracy / 2

    def sentence(self) -> str:
        """One line for the report."""
        off = "n/a" if self.off_top_accuracy is None else f"{100 * self.off_top_accuracy:.1f}%"
        return (
            f"{self.model}, {self.intervention}, {self.task}: {100 * self.top_of_correct:.0f}% of its correct "
            f'answers are "{self.top_answer or "(empty)"}", which it gives on {100 * self.top_share:.0f}% of '
            f"{self.n} documents (answer entropy {self.entropy:.2f} bits); accuracy {100 * self.accuracy:.1f}%, "
            f"{off} where the gold answer is another"
            if self.top_of_correct is not None
            else f"{self.model}, {self.intervention}, {self.task}: no correct answer"
        )


def answer_prior(run: Run, task: str) -> AnswerPrior | None:
    """The measures for one row and task; None when its samples hold no readable answers."""
    scores = run.tasks.get(task)
    answers = None if scores is None else scores.answers
    if scores is None or not answers or any(a is None for a in answers):
        return None
    given = [a[0] for a in answers]  # type: ignore[index]
    counts = Counter(given)
    top, count = min(counts.items(), key=lambda item: (-item[1], item[0]))
    n = len(given)
    entropy = -sum((c / n) * math.log2(c / n) for c in counts.values())
    values = [float(v) for v in scores.scores]
    off = [v for v, a in zip(values, answers) if top not in a[1]]  # type: ignore[index]
    correct = [g for g, v in zip(given, values) if v > 0]
    return AnswerPrior(
        model=run.model,
        intervention=run.label,
        task=task,
        n=n,
        top_answer=top,
        top_share=count / n,
        entropy=abs(entropy),
        accuracy=sum(values) / n,
        off_top_accuracy=sum(off) / len(off) if off else None,
        top_of_correct=sum(g == top for g in correct) / len(correct) if correct else None,
    )


def answer_priors(runs: list[Run], tasks: list[str]) -> list[AnswerPrior]:
    """Every readable (run, task) pair, in the order given."""
    found = (answer_prior(run, task) for run in runs for task in tasks)
    return [item for item in found if item is not None]


def to_markdown(items: list[AnswerPrior]) -> str:
    """The flagged rows, one line each (empty when none is flagged)."""
    flagged = [item for item in items if item.flagged]
    if not flagged:
        return ""
    head = (
        "Answer prior: rows whose accuracy comes mostly from one answer (where the gold answer is not their "
        f"most frequent answer, they score less than half their accuracy; {MIN_CORRECT} or more correct):"
    )
    return "\n".join([head, "", *(f"- {item.sentence()}." for item in flagged)])


def to_csv_rows(items: list[AnswerPrior]) -> list[list[str]]:
    """A header and one row per (run, task), for `<name>_answers.csv`."""
    rows = [
        [
            "model",
            "intervention",
            "task",
            "documents",
            "top_answer",
            "top_share",
            "entropy_bits",
            "accuracy",
            "off_top_accuracy",
            "top_of_correct",
            "flagged",
        ]
    ]

    def pct(value: float | None) -> str:
        return "" if value is None else f"{100 * value:.2f}"

    for item in items:
        rows.append(
            [
                item.model,
                item.intervention,
                item.task,
                str(item.n),
                item.top_answer,
                pct(item.top_share),
                f"{item.entropy:.3f}",
                pct(item.accuracy),
                pct(item.off_top_accuracy),
                pct(item.top_of_correct),
                str(item.flagged).lower(),
            ]
        )
    return rows
