"""The format-vs-fact tables of results/format_vs_fact/README.md, read from the sweep's cells.

    .venv/bin/python results/format_vs_fact/table.py [results/format_vs_fact]   # prints and writes table.md

Per (task, shots, intervention), from each document's sample:

* `correct`: the task's `acc` (the first non-empty line, or its first sentence, is the right name);
* `right name anywhere`: a diagnostic, not a task metric: the right name (or an accepted alias)
  appears as whole words anywhere in the first non-empty line ("The capital of Ireland is Dublin.");
* `well-formed`: the task's `well_formed` (a real name of the asked kind, right or wrong);
* `bare answer`: the first non-empty line is at most 5 words and does not end in ":" (the shape
  the 3-shot examples show: " Japan"; not "The answer is:", not a sentence, not empty);
* distinct answers, the most common answer and its share, and how often an answer is one of the
  three examples' answers (copied from the prompt).

Then, paired by document against the same task's baseline: the documents the baseline got right
and the intervention lost, by what it answered instead: not a bare answer (the format lost), a
bare answer that is no real name of the kind (an invented name), or a wrong real name (the fact
lost); and the documents gained.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

from qk_ablate.stats.runs import read_samples
from qk_ablate.task_data.city_facts import EXTRA_ALIASES, UK_CONSTITUENTS, geonames
from qk_ablate.task_data.scoring import answer_candidates, normalize_name

TASKS = ("city_facts", "country_capital", "country_continent")
EXAMPLES = {  # the answers of each task's 3-shot prefix
    "city_facts": ("Japan", "Canada", "Kenya"),
    "country_capital": ("Tokyo", "Ottawa", "Nairobi"),
    "country_continent": ("Asia", "North America", "Africa"),
}
INTERVENTIONS = ("baseline", "massive", "nonmassive")


def samples(cell: Path, task: str) -> dict[int, dict]:
    (path,) = sorted(cell.rglob(f"samples_{task}_2*.jsonl*"))  # the date: not samples_<task>_0shot_...
    rows = [json.loads(line) for line in read_samples(path) if line.strip()]
    return {r["doc_id"]: r for r in rows}


def line(record: dict) -> str:
    lines = answer_candidates(record["filtered_resps"][0])
    return lines[0] if lines else ""


def anywhere(record: dict) -> bool:
    text = f" {normalize_name(line(record))} "
    return any(f" {normalize_name(a)} " in text for a in record["doc"]["aliases"] if normalize_name(a))


def bare(record: dict) -> bool:
    text = line(record)
    return bool(text) and len(text.split()) <= 5 and not text.rstrip().endswith(":")


def pct(count: float, n: int) -> str:
    return f"{100 * count / n:.0f}"


def continents(cells: dict[str, Path]) -> list[str]:
    countries = geonames()[1]
    where = {normalize_name(n): c["continentcode"] for code, c in countries.items()
             for n in (c["name"], *EXTRA_ALIASES.get(code, ()))}
    where.update({normalize_name(n): "EU" for n in UK_CONSTITUENTS.values()})
    rows = ["| intervention | wrong answers naming a real country | on the asked city's continent | "
            "the same answers shuffled over the questions (mean [2.5%, 97.5%]) |", "|---|---:|---:|---|"]
    for label, cell in cells.items():
        wrong = [(normalize_name(line(r)), countries[r["doc"]["country_code"]]["continentcode"])
                 for r in samples(cell, "city_facts").values() if r["acc"] == 0 and normalize_name(line(r)) in where]
        answers, asked = [a for a, _ in wrong], [c for _, c in wrong]
        rng, rates = random.Random(0), []
        for _ in range(2000):
            rng.shuffle(answers)
            rates.append(sum(where[a] == c for a, c in zip(answers, asked)) / len(wrong))
        rates.sort()
        same = sum(where[a] == c for a, c in wrong)
        rows.append(f"| {label} | {len(wrong)} | {same} ({pct(same, len(wrong))}%) | "
                    f"{100 * sum(rates) / len(rates):.0f}% [{100 * rates[50]:.0f}%, {100 * rates[1949]:.0f}%] |")
    return rows


def main(root: Path) -> str:
    model = root / "smollm2-135m"
    cells = {i: model / i for i in INTERVENTIONS if (model / i / "cell.json").is_file()}
    out = ["| task | shots | intervention | correct | right name anywhere | well-formed | bare answer | distinct answers "
           "| top answer (share) | an example's answer |",
           "|---|---:|---|---:|---:|---:|---:|---:|---|---:|"]
    split = ["| task | shots | intervention | lost | of which: not a bare answer (format) | a bare answer naming nothing of the kind "
             "| a wrong real name (fact) | gained | net Δ correct |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for task in (t for t in TASKS if any(cells["baseline"].rglob(f"samples_{t}_2*.jsonl*"))):
        for shots, name in (("3", task), ("0", f"{task}_0shot")):
            base = samples(cells["baseline"], name)
            for label, cell in cells.items():
                recs = samples(cell, name)
                n = len(recs)
                answers = Counter(normalize_name(line(r)) for r in recs.values())
                top, count = min(answers.items(), key=lambda kv: (-kv[1], kv[0]))
                shown = next(line(r) for r in recs.values() if normalize_name(line(r)) == top) or "(empty)"
                correct = sum(r["acc"] for r in recs.values())
                examples = {normalize_name(e) for e in EXAMPLES[task]}
                out.append(" | ".join([
                    f"| {task}", shots, label, pct(correct, n), pct(sum(map(anywhere, recs.values())), n),
                    pct(sum(r["well_formed"] for r in recs.values()), n), pct(sum(map(bare, recs.values())), n),
                    str(len(answers)), f"{shown} ({pct(count, n)}%)",
                    pct(sum(normalize_name(line(r)) in examples for r in recs.values()), n) + " |"]))
                if label == "baseline":
                    continue
                lost = [recs[i] for i in recs if base[i]["acc"] == 1 and recs[i]["acc"] == 0]
                fact = sum(r["well_formed"] == 1 for r in lost)
                invented = sum(r["well_formed"] == 0 and bare(r) for r in lost)
                gained = sum(base[i]["acc"] == 0 and recs[i]["acc"] == 1 for i in recs)
                split.append(f"| {task} | {shots} | {label} | {len(lost)} | {len(lost) - fact - invented} | {invented} | "
                             f"{fact} | {gained} | {100 * (correct - sum(r['acc'] for r in base.values())) / n:+.0f} |")
    text = ("Per cell (100 documents each; numbers in %):\n\n" + "\n".join(out)
            + "\n\nDocuments the baseline answered right and the intervention got wrong (counts of 100), by what it "
            "answered instead; the documents it gained; and the net change of `correct` in points:\n\n"
            + "\n".join(split) + "\n\n3-shot city_facts: the wrong answers that name a real country, and how many "
            "name one on the asked city's continent:\n\n" + "\n".join(continents(cells)) + "\n")
    (root / "table.md").write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent)))
