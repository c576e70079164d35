"""Reading lm-eval run folders: per-document scores from `--log_samples`, and what produced them.

A run folder is what `lm_eval --output_path DIR --log_samples` writes (`DIR/<model>/results_<time>.json`
and `samples_<task>_<time>.jsonl`, which may be gzipped to `.jsonl.gz` to keep committed results
small), or any folder above it. Several results files in one folder
(runs added later) are merged task by task, the newest file winning; each task's samples come
from the file written with the results that report it. Runs of one model and intervention made
by several `lm_eval` invocations (one per task, say) are merged into one by `merge_runs`. Anything unusable is a QKAblateError that
names the file and says what is wrong. Each document's answer is read too where the samples
hold one (`baseline_signal.read_answer`), for the report's test of whether a baseline carries signal;
a record without one is still read for its score.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qk_ablate.core.record import read_record
from qk_ablate.core.spec import LABEL_KEYS, InterventionSpec
from qk_ablate.core.vocabulary import NONE, is_noop
from qk_ablate.errors import QKAblateError
from qk_ablate.stats.baseline_signal import Answer, read_answer
from qk_ablate.task_data.catalogue import check_chance, check_kind

PREFERRED_FILTERS = ("none", "strict-match", "flexible-extract")


@dataclass(frozen=True)
class TaskScores:
    """One task's per-document scores, in document order, with the hashes that pair documents."""

    task: str
    metric: str
    doc_ids: tuple[int, ...]
    doc_hashes: tuple[str, ...]
    scores: np.ndarray  # float64 [n]
    answers: tuple[Answer | None, ...] | None = None  # per document: (answer, accepted), when readable
    choice_chance: float | None = None  # multiple choice: the mean of 1 / (choices of a document); else None

    @property
    def mean(self) -> float:
        return float(self.scores.mean())


@dataclass(frozen=True)
class Run:
    """What one run folder holds: a label, the intervention, per-task scores, and the kinds its
    tasks declared in their YAML metadata (`kind: contextual|parametric`)."""

    path: Path
    model: str
    intervention: dict[str, Any]
    tasks: dict[str, TaskScores] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    chances: dict[str, float] = field(default_factory=dict)  # `chance:` declared in YAML metadata

    @property
    def label(self) -> str:
        return describe(self.intervention)

    @property
    def is_baseline(self) -> bool:
        return self.label == "baseline"


_DEFAULTS = InterventionSpec().to_dict()


def describe(spec: dict[str, Any]) -> str:
    """A short name for an intervention: its arguments that differ from the defaults and matter, and
    the seed of a random draw even at its default (so seed 0's row reads like seeds 1 and 2's)."""
    if is_noop(spec):
        return "baseline"
    drawn = (
        (spec.get("ablate") == "nonmassive" and spec.get("control", "random") == "random")
        or spec.get("select") == "band"
        or spec.get("fill") == "shuffle"
    )
    switched = {"ablation": "ablate", "quant": "quant", "kv": "kv_cache"}  # a part's keys count while it is on
    keys = [
        key
        for part, names in LABEL_KEYS.items()
        if part == "place" or spec.get(switched[part], NONE) != NONE
        for key in names
    ]
    parts = [f"{k}={spec[k]}" for k in keys if k in spec and (spec[k] != _DEFAULTS.get(k) or (k == "seed" and drawn))]
    return ",".join(parts)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QKAblateError(
            f"results file '{path}' is not readable JSON ({type(exc).__name__}); rerun lm_eval for it"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise QKAblateError(f"results file '{path}' has no 'results' table; is it an lm_eval results_*.json?")
    return data


def _stamp(path: Path) -> str:
    return path.stem[len("results_") :]


def samples_file(results: Path, task: str) -> Path:
    """The samples file written with `results` for `task`: `.jsonl`, or the same gzipped (`.jsonl.gz`)."""
    plain = results.parent / f"samples_{task}_{_stamp(results)}.jsonl"
    packed = plain.with_name(plain.name + ".gz")
    return packed if packed.is_file() and not plain.is_file() else plain


def read_samples(samples: Path) -> list[str]:
    """The lines of a samples file, gzipped or not; split on "\\n" only, since reviews hold characters
    (U+0085, U+2028) that str.splitlines breaks on."""
    try:
        data = gzip.decompress(samples.read_bytes()) if samples.suffix == ".gz" else samples.read_bytes()
        return data.decode("utf-8").split("\n")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise QKAblateError(f"samples file '{samples}' is not readable ({type(exc).__name__})") from None


def _task_scores(task: str, samples: Path, choices: Any = None) -> TaskScores:
    by_filter: dict[str, list[tuple[int, str, float, str, Answer | None]]] = {}
    options: list[int] = []  # choices per multiple-choice record
    lines = read_samples(samples)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            metric = record["metrics"][0]
            value = float(record[metric])
            row = (int(record["doc_id"]), str(record["doc_hash"]), value, metric, read_answer(record, choices))
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
            raise QKAblateError(f"samples file '{samples}' line {number} is not an lm_eval sample record") from None
        by_filter.setdefault(str(record.get("filter", "none")), []).append(row)
        resps = record.get("filtered_resps")
        if isinstance(resps, list) and len(resps) >= 2 and all(isinstance(r, list) for r in resps):
            options.append(len(resps))
    if not by_filter:
        raise QKAblateError(f"samples file '{samples}' is empty; rerun lm_eval with --log_samples")
    chosen = next((f for f in PREFERRED_FILTERS if f in by_filter), sorted(by_filter)[0])
    rows = sorted(by_filter[chosen], key=lambda r: r[0])
    ids = [r[0] for r in rows]
    if len(set(ids)) != len(ids):
        raise QKAblateError(f"samples file '{samples}' lists a document twice (repeats > 1 is not supported)")
    return TaskScores(
        task=task,
        metric=rows[0][3] if chosen == "none" else f"{rows[0][3]},{chosen}",
        doc_ids=tuple(ids),
        doc_hashes=tuple(r[1] for r in rows),
        scores=np.array([r[2] for r in rows], dtype=np.float64),
        answers=tuple(r[4] for r in rows),
        choice_chance=float(np.mean([1 / k for k in options])) if options and len(options) >= len(rows) else None,
    )


def load_run(path: str | Path) -> Run:
    """The run in folder `path` (or a single results_*.json file and its samples beside it)."""
    root = Path(path).expanduser()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(root.rglob("results_*.json"), key=_stamp)
    else:
        raise QKAblateError(f"run '{path}' does not exist; give the --output_path folder of an lm_eval run")
    if not files:
        raise QKAblateError(f"run '{path}' holds no results_*.json; give the --output_path folder of an lm_eval run")
    sources: dict[str, Path] = {}
    config: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    chances: dict[str, float] = {}
    choices: dict[str, Any] = {}
    for file in files:  # oldest first, so newer files win
        data = _read_json(file)
        config = data.get("config") or config
        groups = {name for name, members in (data.get("group_subtasks") or {}).items() if members}
        for task in data["results"]:
            if task not in groups:  # group means are recomputed from their members, not read
                sources[task] = file
                declared = ((data.get("configs") or {}).get(task) or {}).get("metadata") or {}
                if "kind" in declared:
                    kinds[task] = check_kind(
                        task, declared["kind"], f"results file '{file}' (the task's YAML metadata)"
                    )
                if declared.get("chance") is not None:
                    chances[task] = check_chance(
                        task, declared["chance"], f"results file '{file}' (the task's YAML metadata)"
                    )
                choices[task] = ((data.get("configs") or {}).get(task) or {}).get("doc_to_choice")
    tasks = {}
    for task, file in sources.items():
        samples = samples_file(file, task)
        if not samples.is_file():
            raise QKAblateError(
                f"run '{path}' has results for {task} but no samples file ({samples.name}); "
                "rerun lm_eval with --log_samples, which the paired intervals need"
            )
        tasks[task] = _task_scores(task, samples, choices.get(task))
    record = read_record(config)
    model, engine, spec = record.model or _model_name(config), record.engine, record.intervention
    if engine != "hf":  # another engine's runs are their own model: each pairs with its own baseline
        model = f"{model} ({engine})"
    return Run(path=root, model=model, intervention=spec, tasks=tasks, kinds=kinds, chances=chances)


def merge_runs(runs: list[Run]) -> list[Run]:
    """One run per (model, intervention), in first-seen order: the tasks of runs made by separate
    `lm_eval` invocations are put together. A task present in two of them is an error."""
    merged: dict[tuple[str, str], Run] = {}
    for run in runs:
        key = (run.model, json.dumps(run.intervention, sort_keys=True, default=str))
        if key not in merged:
            merged[key] = run
            continue
        first = merged[key]
        twice = sorted(set(first.tasks) & set(run.tasks))
        if twice:
            raise QKAblateError(
                f"'{first.path}' and '{run.path}' are both {run.model} / {run.label} and both have {twice[0]}; "
                "give only one of them"
            )
        merged[key] = Run(
            first.path,
            first.model,
            first.intervention,
            {**first.tasks, **run.tasks},
            {**first.kinds, **run.kinds},
            {**first.chances, **run.chances},
        )
    return list(merged.values())


def load_runs(paths: list[str | Path]) -> list[Run]:
    """`load_run` of every path, merged by model and intervention (`merge_runs`)."""
    return merge_runs([load_run(path) for path in paths])


def _model_name(config: dict[str, Any]) -> str:
    args = config.get("model_args")
    if isinstance(args, dict) and args.get("pretrained"):
        return str(args["pretrained"])
    if isinstance(args, str):
        for part in args.split(","):
            if part.startswith("pretrained="):
                return part.split("=", 1)[1]
    return str(config.get("model", "model"))
