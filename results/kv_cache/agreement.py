"""How close is our simulated KV quantization to transformers' real quantized cache, document by document?

Reads the cells of configs/kv_cache.yaml (results/kv_cache/short: passkey 1k, 2k) and
configs/kv_cache_long.yaml (results/kv_cache/long: 4k, 8k) and, for each pair of cells, counts the
documents on which both give the same answer (the first number of the response: what passkey
scores against the key) and the same exact generated text (8 tokens at most: it also sees what
follows the answer), the first with a 95% Wilson interval, beside both accuracies and the paired
bootstrap interval of their difference (`qk_ablate.stats.compare`, the report's own). Failures differ
too, so per cell it also gives the share of the key's digits its answers get right from the start.
Writes agreement.md and agreement.json here.

    .venv/bin/python results/kv_cache/agreement.py
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from qk_ablate.stats.compare import compare
from qk_ablate.stats.runs import Run, load_run, merge_runs, read_samples
from qk_ablate.task_data.scoring import first_number

HERE = Path(__file__).resolve().parent
FOLDERS = (HERE / "short" / "smollm2-135m", HERE / "long" / "smollm2-135m")
# (reference, other): the real cache against each simulation of the same width, then each against the plain model
PAIRS = (
    ("real_int4", "sim_int4_channel"), ("real_int4", "sim_int4_quanto_groups"),
    ("real_int2", "sim_int2_channel"), ("real_int2", "sim_int2_quanto_groups"),
    ("baseline", "real_int4"), ("baseline", "real_int2"),
    ("baseline", "sim_int4_channel"), ("baseline", "sim_int4_quanto_groups"),
    ("baseline", "sim_int2_channel"), ("baseline", "sim_int2_quanto_groups"),
)
ALL = "all lengths"
Cell = tuple[Run, dict[str, list[tuple[str, str]]]]  # the run, and per task each document's (generated text, key)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of the proportion k / n."""
    centre = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return max(0.0, centre - half), min(1.0, centre + half)


def texts(cell: Path) -> dict[str, list[tuple[str, str]]]:
    """Per task, each document's exact generated text (the samples file's filtered response) and its key, in
    document order."""
    found = {}
    for samples in cell.rglob("samples_*.jsonl*"):
        records = [json.loads(line) for line in read_samples(samples) if line.strip()]
        found[re.match(r"samples_(.+)_\d{4}-\d\d-\d\dT", samples.name).group(1)] = [
            (str(r["filtered_resps"][0]), str(r["target"])) for r in sorted(records, key=lambda r: int(r["doc_id"]))]
    return found


def leading_digits(text: str, key: str) -> int:
    """How many of the key's digits the answer (its first number) gets right from the start."""
    answer = first_number(text) or ""
    return next((i for i, (x, y) in enumerate(zip(answer, key)) if x != y), min(len(answer), len(key)))


def by_length(task: str) -> int:
    return int(task.split("_")[1].rstrip("k"))


def load_cells() -> dict[str, Cell]:
    """Each cell name's run (its short and long halves merged into one) and its generated texts."""
    names = sorted({cell.name for folder in FOLDERS if folder.is_dir() for cell in folder.iterdir()
                    if (cell / "cell.json").is_file()})
    cells = {}
    for name in names:
        folders = [folder / name for folder in FOLDERS if (folder / name / "cell.json").is_file()]
        (run,) = merge_runs([load_run(cell) for cell in folders])
        cells[name] = (run, {task: text for cell in folders for task, text in texts(cell).items()})
    return cells


def pair_rows(a: Cell, b: Cell) -> list[dict]:
    """One row per task and one pooled row: agreement of answers and texts, accuracies, b - a."""
    (a, a_texts), (b, b_texts) = a, b
    rows, pooled = [], {"n": 0, "same_answer": 0, "same_text": 0, "correct_a": 0.0, "correct_b": 0.0}
    for task in sorted(a.tasks, key=by_length):
        ta, tb = a.tasks[task], b.tasks[task]
        assert ta.doc_hashes == tb.doc_hashes, f"{task}: the cells scored different documents"
        n = len(ta.doc_ids)
        same_answer = sum(first_number(x) == first_number(y) for (x, _), (y, _) in zip(a_texts[task], b_texts[task]))
        same_text = sum(x == y for (x, _), (y, _) in zip(a_texts[task], b_texts[task]))
        delta = compare(a, b, tasks=[task], kinds={task: "contextual"}).tasks[task]
        rows.append({"task": task, "n": n, "same_answer": same_answer, "same_text": same_text,
                     "same_answer_ci": wilson(same_answer, n), "acc_a": ta.mean, "acc_b": tb.mean,
                     "delta": [delta.value, delta.low, delta.high]})
        for key, value in (("n", n), ("same_answer", same_answer), ("same_text", same_text),
                           ("correct_a", ta.scores.sum()), ("correct_b", tb.scores.sum())):
            pooled[key] += value
    n = pooled["n"]
    rows.append({"task": ALL, "n": n, "same_answer": pooled["same_answer"], "same_text": pooled["same_text"],
                 "same_answer_ci": wilson(pooled["same_answer"], n), "acc_a": pooled["correct_a"] / n,
                 "acc_b": pooled["correct_b"] / n, "delta": None})
    return rows


def main() -> None:
    cells = load_cells()
    result = {f"{a} vs {b}": pair_rows(cells[a], cells[b]) for a, b in PAIRS if a in cells and b in cells}
    digits, numbers, first_digit = {}, {}, {}
    for name, (_, found) in cells.items():
        groups = {**dict(sorted(found.items(), key=lambda item: by_length(item[0]))), ALL: sum(found.values(), [])}
        digits[name] = {task: sum(leading_digits(*doc) for doc in docs) / sum(len(key) for _, key in docs)
                        for task, docs in groups.items()}
        numbers[name] = sum(first_number(text) is not None for text, _ in groups[ALL])
        first_digit[name] = sum(leading_digits(*doc) > 0 for doc in groups[ALL])
    summary = {"pairs": result, "leading_digits_right": digits, "answers_a_number": numbers,
               "first_digit_right": first_digit}
    (HERE / "agreement.json").write_text(json.dumps(summary, indent=1, default=float) + "\n", encoding="utf-8")
    lines = ["| A vs B | task | docs | same answer [95% CI] | same text | acc A | acc B | B − A [95% CI] |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for pair, rows in result.items():
        for row in rows:
            low, high = row["same_answer_ci"]
            delta = "" if row["delta"] is None else "{:+.0f} [{:+.0f}, {:+.0f}]".format(*(100 * v for v in row["delta"]))
            lines.append(f"| {pair} | {row['task']} | {row['n']} | {row['same_answer']}/{row['n']} "
                         f"[{100 * low:.0f}%, {100 * high:.0f}%] | {row['same_text']}/{row['n']} | "
                         f"{100 * row['acc_a']:.0f} | {100 * row['acc_b']:.0f} | {delta} |")
    tasks = list(next(iter(digits.values())))
    docs = sum(map(len, next(iter(cells.values()))[1].values()))  # every cell scored the same documents
    lines += ["", f"Share of the key's digits each cell's answer gets right from its start, and of its {docs} "
              "documents how many it answers with a number at all and how many with the key's first digit:", "",
              f"| cell | {' | '.join(tasks)} | answers a number | first digit right |",
              "|---|" + "---:|" * (len(tasks) + 2)]
    for name, share in digits.items():
        shares = " | ".join(f"{100 * share[t]:.0f}%" for t in tasks)
        lines.append(f"| {name} | {shares} | {numbers[name]} | {first_digit[name]} |")
    (HERE / "agreement.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
