"""Answer-prior collapse (`stats/answer_prior.py`): the issue's case, a destroyed model answering the
majority country, is flagged; a baseline that knows its answers is not."""

from __future__ import annotations

import pytest

from qk_ablate.stats.answer_prior import answer_prior
from qk_ablate.stats.report import build_report, to_markdown, write_report
from qk_ablate.stats.runs import load_run
from test_report import write_run

# 60 cities: 17 in China, the rest spread over 43 other countries (as in issue 25's first 60 rows)
GOLD = ["China"] * 17 + [f"Country{i}" for i in range(43)]


def _records(answers: list[str]) -> tuple[list[float], list[dict]]:
    scores = [float(a == g) for a, g in zip(answers, GOLD)]
    return scores, [{"filtered_resps": [f" {a}"], "target": g} for a, g in zip(answers, GOLD)]


@pytest.fixture
def runs(tmp_path):
    knows = [g if i % 3 else "Japan" for i, g in enumerate(GOLD)]  # right on two thirds, wrong otherwise
    collapsed = ["China"] * 29 + GOLD[29:33] + ["Japan"] * 27  # China 29 times: 17 right by the prior
    base_scores, base_records = _records(knows)
    scores, records = _records(collapsed)
    base = load_run(write_run(tmp_path / "base", {"my_cities": base_scores}, records={"my_cities": base_records}))
    massive = load_run(
        write_run(tmp_path / "m", {"my_cities": scores}, {"ablate": "massive"}, records={"my_cities": records})
    )
    return base, massive


def test_a_row_right_mostly_by_its_majority_answer_is_flagged(runs):
    base, massive = runs
    prior = answer_prior(massive, "my_cities")
    assert (prior.top_answer, prior.top_share) == ("china", pytest.approx(29 / 60))
    assert prior.accuracy == pytest.approx(21 / 60) and prior.top_of_correct == pytest.approx(17 / 21)
    assert prior.off_top_accuracy == pytest.approx(4 / 43)  # right on 4 of the 43 non-China cities
    assert prior.flagged and 0 < prior.entropy < 2.5
    known = answer_prior(base, "my_cities")
    assert (
        not known.flagged and known.entropy > 3.5 and known.top_of_correct == 0.0
    )  # its top answer, "japan", is wrong


def test_the_report_names_the_collapsed_row_and_writes_every_rows_figures(runs, tmp_path):
    report = build_report(list(runs), iterations=200)
    text = to_markdown(report)
    assert "Answer prior: rows whose accuracy comes mostly from one answer" in text
    assert 'ablate=massive, my_cities: 81% of its correct answers are "china"' in text
    assert "baseline, my_cities" not in text
    written = write_report(report, tmp_path / "out")
    answers = (tmp_path / "out" / "report_answers.csv").read_text().splitlines()
    assert tmp_path / "out" / "report_answers.csv" in written and len(answers) == 3
    assert answers[2].endswith(",true") and answers[1].endswith(",false")


def test_a_model_that_knows_every_answer_is_not_flagged_on_a_set_whose_gold_leans_one_way(tmp_path):
    """All 60 right, 17 of them China: the share of correct answers that are "china" is only the gold's
    lean; where the gold is another country it is right as often, so nothing is flagged."""
    scores, records = _records(list(GOLD))
    run = load_run(write_run(tmp_path / "all", {"my_cities": scores}, records={"my_cities": records}))
    prior = answer_prior(run, "my_cities")
    assert prior.top_answer == "china" and prior.off_top_accuracy == 1.0 and not prior.flagged
