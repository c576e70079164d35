"""The depth view (`qk-ablate depth`): at which layer the gold answer becomes the model's guess,
and at which layer an intervention stops it, for contextual versus parametric tasks.

For each prompt of our lm-eval tasks (exactly the text lm-eval sends), one forward per
intervention reads the residual stream at the last position through the logit lens and the
tuned lens (`lens.py`) and records the rank and probability of the gold answer's first token
at every layer. The gold token is the first token of the target continuation as the model's
tokenizer encodes it after the prompt (lm-eval's target delimiter included). Where that token
is bare whitespace (SmolLM2 writes " 62441" as " ", "6", ...), the whitespace is fed as the
first generated token, outside the prompt (so `stage=prefill` leaves it alone, as in
generation), and the gold token is the first one with visible text: reading a space tells
nothing about the answer.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qk_ablate.core.spec import InterventionSpec
from qk_ablate.engines.hf.attachment import Attachment
from qk_ablate.errors import QKAblateError
from qk_ablate.probes.lens import TunedLens, log_probs, readout, residuals
from qk_ablate.task_data.catalogue import KINDS, task_kind

BASELINE = "baseline"
LENSES = ("logit", "tuned")
LENS_DOCS = 20  # documents per task for training a tuned lens: the ones after the evaluated ones
HELD_OUT = 0.2  # ... of which this share is held out to measure it


@dataclass(frozen=True)
class Prompt:
    """One document: the token ids fed (prompt, then any whitespace forced before the answer) and the gold token."""

    task: str
    kind: str
    doc: int
    target: str
    ids: torch.Tensor
    prompt_len: int
    gold: int


def parse_lenses(text: str) -> tuple[str, ...]:
    choice = str(text).strip().lower()
    if choice == "both":
        return LENSES
    if choice not in LENSES:
        raise QKAblateError(f"--lens {text!r} is not valid; choose logit, tuned or both")
    return (choice,)


def parse_interventions(texts: list[str] | None, model: Any | None = None) -> dict[str, InterventionSpec]:
    """The baseline plus each `--intervention` (intervention keys only, lm-eval syntax), by label."""
    from qk_ablate.models.loading import parse_model_args

    specs = {BASELINE: InterventionSpec()}
    for text in texts or []:
        options, spec = parse_model_args(text)
        if options:
            raise QKAblateError(f"--intervention {text!r} sets {next(iter(options))}=; give model keys in --model_args")
        label = ",".join(p.strip() for p in str(text).split(",") if p.strip())
        if not label or label in specs:
            raise QKAblateError(f"--intervention {text!r} is empty or given twice")
        specs[label] = spec.for_model(model) if model is not None else spec
    return specs


def gold_tokens(tokenizer: Any, context: str, target: str, delimiter: str = " ") -> tuple[list[int], int, int]:
    """(ids to feed, prompt length, gold token id): the continuation encoded after the prompt, as lm-eval does."""
    continuation = target if not context or context[-1].isspace() else delimiter + target
    prompt = list(tokenizer(context)["input_ids"])
    whole = list(tokenizer(context + continuation)["input_ids"])
    if whole[: len(prompt)] == prompt:
        rest = whole[len(prompt) :]
    else:  # the prompt's last token merges with the answer: encode the continuation on its own
        rest = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    forced = 0
    while forced < len(rest) and not tokenizer.decode([rest[forced]]).strip():
        forced += 1
    if forced == len(rest):
        raise QKAblateError(
            f"the gold answer {target!r} has no visible token after the prompt; this task cannot be read by depth"
        )
    return prompt + rest[:forced], len(prompt), rest[forced]


def load_prompts(
    tasks: list[str], tokenizer: Any, metadata: dict[str, Any], limit: int, extra: int = 0, manager: Any = None
) -> tuple[list[Prompt], list[Prompt]]:
    """(the first `limit` documents of each task, the next `extra`), built by lm-eval itself."""
    from lm_eval.tasks import TaskManager

    import qk_ablate.plugin  # noqa: F401  (our tasks on the TaskManager's path)

    manager = manager or TaskManager(metadata=metadata)
    known = set(manager.all_tasks)
    for task in tasks:
        if task not in known:
            near = get_close_matches(task, sorted(known), n=3)
            raise QKAblateError(
                f"unknown task {task!r}; {'did you mean ' + ', '.join(near) + '? ' if near else ''}`lm_eval ls tasks` lists them"
            )
    built = manager.load(list(tasks))["tasks"]
    evaluated: list[Prompt] = []
    spare: list[Prompt] = []
    for name in tasks:
        task = built.get(name)
        if task is None:
            raise QKAblateError(f"{name} is a group or tag; name its tasks one by one")
        kind = task_kind(name, declared={name: (task.config.metadata or {}).get("kind")})
        if kind not in KINDS:
            raise QKAblateError(
                f"task {name} is neither contextual nor parametric; add kind: contextual|parametric to its YAML metadata"
            )
        task.build_all_requests(limit=limit + extra, rank=0, world_size=1)
        firsts: dict[int, Any] = {}  # doc_id -> its first lm-eval Instance
        for instance in task.instances:
            firsts.setdefault(instance.doc_id, instance)
        for doc_id, instance in sorted(firsts.items()):
            target = _target(task, instance.doc)
            ids, prompt_len, gold = gold_tokens(tokenizer, instance.args[0], target, task.config.target_delimiter)
            prompt = Prompt(name, kind, doc_id, target, torch.tensor(ids), prompt_len, gold)
            (evaluated if doc_id < limit else spare).append(prompt)
    return evaluated, spare


def _target(task: Any, doc: dict) -> str:
    target = task.doc_to_target(doc)
    if task.config.output_type == "multiple_choice" and isinstance(target, int):
        target = task.doc_to_choice(doc)[target]
    if isinstance(target, list):
        target = target[0]
    return str(target)


def measure(
    model: Any,
    prompts: list[Prompt],
    spec: InterventionSpec,
    lenses: dict[str, TunedLens | None],
    progress: Callable[[], None] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per lens: gold `rank` (1 = top), `prob` and KL to the model's output `kl`, each `[prompts, L+1]`."""
    read = readout(model)
    device = next(model.parameters()).device
    rows: dict[str, dict[str, list]] = {name: {"rank": [], "prob": [], "kl": []} for name in lenses}
    with Attachment(model, spec) as attached:
        for prompt in prompts:
            ids = prompt.ids.to(device)[None]
            inside = (torch.arange(ids.shape[1], device=device) < prompt.prompt_len)[None]
            with attached.positions(inside):
                stream, logits = residuals(model, ids)
            final = torch.log_softmax(logits[0, -1].float(), dim=-1)
            with torch.no_grad():
                for name, lens in lenses.items():
                    lp = log_probs(read, lens.translate(stream[:, 0, -1]) if lens is not None else stream[:, 0, -1])
                    gold = lp[:, prompt.gold]
                    rows[name]["rank"].append(((lp > gold[:, None]).sum(-1) + 1).cpu())
                    rows[name]["prob"].append(gold.exp().cpu())
                    rows[name]["kl"].append((final.exp() * (final - lp)).sum(-1).cpu())
            if progress is not None:
                progress()
    return {name: {k: torch.stack(v).numpy() for k, v in parts.items()} for name, parts in rows.items()}


def summarize(prompts: list[Prompt], results: dict[str, dict[str, dict[str, np.ndarray]]]) -> dict[str, Any]:
    """Median rank, quartiles, mean probability, top-1 share per layer; by kind and by task."""
    groups = {kind: [i for i, p in enumerate(prompts) if p.kind == kind] for kind in KINDS}
    groups.update(
        {task: [i for i, p in enumerate(prompts) if p.task == task] for task in dict.fromkeys(p.task for p in prompts)}
    )
    out: dict[str, Any] = {}
    for label, by_lens in results.items():
        for lens, arrays in by_lens.items():
            for group, rows in groups.items():
                if not rows:
                    continue
                rank, prob = arrays["rank"][rows], arrays["prob"][rows]
                median = np.median(rank, axis=0)
                out.setdefault(lens, {}).setdefault(label, {})[group] = {
                    "n": len(rows),
                    "median_rank": median.tolist(),
                    "q25_rank": np.percentile(rank, 25, axis=0).tolist(),
                    "q75_rank": np.percentile(rank, 75, axis=0).tolist(),
                    "mean_prob": _round(prob.mean(axis=0)),
                    "top1": _round((rank == 1).mean(axis=0)),
                    "mean_kl_to_output": _round(arrays["kl"][rows].mean(axis=0)),
                    "first_layer_median_rank_1": _first(median <= 1),
                    "first_layer_median_rank_le_10": _first(median <= 10),
                }
    return out


def _first(flags: np.ndarray) -> int | None:
    hits = np.flatnonzero(flags)
    return int(hits[0]) if hits.size else None


def _round(values: np.ndarray, digits: int = 5) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in np.asarray(values, dtype=float)]


def write_json(path: Path, header: dict[str, Any], prompts: list[Prompt], results: dict, summary: dict) -> Path:
    """depth.json: what was run, the summary, and every prompt's ranks and probabilities."""
    rows = []
    for i, p in enumerate(prompts):
        rows.append(
            {
                "task": p.task,
                "kind": p.kind,
                "doc": p.doc,
                "target": p.target,
                "gold_token": p.gold,
                "forced_tokens": [int(t) for t in p.ids[p.prompt_len :]],
                **{
                    label: {
                        lens: {"rank": arrays["rank"][i].astype(int).tolist(), "prob": _round(arrays["prob"][i], 4)}
                        for lens, arrays in by_lens.items()
                    }
                    for label, by_lens in results.items()
                },
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**header, "summary": summary, "prompts": rows}, indent=1)
    path.write_text(
        _NUMBER_LIST.sub(lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]", text), encoding="utf-8"
    )
    return path


_NUMBER_LIST = re.compile(r"\[((?:\s*(?:-?[\d.e+-]+|null),?)+)\s*\]")  # one line per list of numbers


def plot(path: Path, summary: dict[str, Any], title: str, tasks_by_kind: dict[str, list[str]]) -> Path:
    """Median gold rank by layer (log y), one line per intervention; rows = lenses, columns = kinds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lenses = list(summary)
    kinds = [k for k in KINDS if tasks_by_kind.get(k)]
    fig, axes = plt.subplots(
        len(lenses), len(kinds), figsize=(6 * len(kinds), 3.6 * len(lenses)), squeeze=False, sharey=True
    )
    for r, lens in enumerate(lenses):
        for c, kind in enumerate(kinds):
            ax = axes[r][c]
            for label, groups in summary[lens].items():
                stats = groups[kind]
                layers = np.arange(len(stats["median_rank"]))
                (line,) = ax.plot(layers, stats["median_rank"], marker=".", label=label)
                ax.fill_between(layers, stats["q25_rank"], stats["q75_rank"], color=line.get_color(), alpha=0.12)
            ax.set_yscale("log")
            ax.set_title(f"{lens} lens - {kind}: {', '.join(tasks_by_kind[kind])} (n={stats['n']})", fontsize=9)
            ax.set_xlabel("layer (0 = embeddings; last = model output)")
            ax.set_ylabel("median rank of gold first token")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title + "  (band: 25-75% of prompts)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(text)).name).strip("_") or "model"


def split_held_out(prompts: list[Prompt]) -> tuple[list[Prompt], list[Prompt]]:
    """(training, held-out) by document: the last `HELD_OUT` share of each task's spare documents."""
    train, held = [], []
    for task in dict.fromkeys(p.task for p in prompts):
        mine = [p for p in prompts if p.task == task]
        cut = len(mine) - max(1, round(len(mine) * HELD_OUT))
        train += mine[:cut]
        held += mine[cut:]
    return train, held


def run_depth(
    model_args: str,
    interventions: list[str] | None,
    tasks: str,
    limit: int = 30,
    lens: str = "both",
    train_lens: bool = False,
    out: str | None = None,
    lens_cache: str | None = None,
    device: str | None = None,
    settings: Any = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """`qk-ablate depth`: every value is checked before the model loads; returns the files written."""
    from tqdm import tqdm

    from qk_ablate.models.loading import load_from_model_args, parse_model_args
    from qk_ablate.probes.lens import collect, kl_to_final, train_tuned_lens

    names = parse_lenses(lens)
    task_list = [t.strip() for t in str(tasks).split(",") if t.strip()]
    if not task_list or limit < 1:
        raise QKAblateError("--tasks must name at least one task and --limit must be at least 1")
    if train_lens and "tuned" not in names:
        raise QKAblateError("--train-lens trains the tuned lens; use it with --lens tuned or --lens both")
    options, given = parse_model_args(model_args)
    if not given.is_noop:
        raise QKAblateError(
            "--model_args sets an intervention; give it with --intervention (the baseline is always the plain model)"
        )
    parse_interventions(interventions)
    folder = Path(out) if out else Path("results") / "depth" / slug(options.get("pretrained", "smollm2-135m"))
    cache = Path(lens_cache) if lens_cache else folder / "tuned_lens.pt"
    if "tuned" in names and not train_lens and not cache.is_file():
        TunedLens.load(cache)  # the one-line error, before minutes of loading
    model, tokenizer, _, name = load_from_model_args(model_args, device)
    specs = parse_interventions(interventions, model)
    metadata = {"pretrained": name, **{k: options[k] for k in ("gguf_file",) if k in options}}
    prompts, spare = load_prompts(task_list, tokenizer, metadata, limit, LENS_DOCS if train_lens else 0)
    read, where = readout(model), next(model.parameters()).device
    lenses: dict[str, TunedLens | None] = {"logit": None} if "logit" in names else {}
    lens_info: dict[str, Any] | None = None
    if "tuned" in names:
        if train_lens:
            train, held = split_held_out(spare)
            log(
                f"tuned lens: residuals of {len(train)} training and {len(held)} held-out prompts (documents {limit}+ of each task)"
            )
            stream = collect(model, [p.ids.to(where) for p in train])
            meta = {
                "model": name,
                "tasks": task_list,
                "documents": [limit, limit + LENS_DOCS],
                "held_out_prompts": len(held),
            }
            started = time.time()
            tuned = train_tuned_lens(
                read,
                stream,
                settings,
                meta,
                lambda s, kl: (
                    log(f"  step {s}: mean KL {kl:.3f} ({time.time() - started:.0f} s)") if s % 10 == 0 else None
                ),
            )
            tuned.meta["train_seconds"] = round(time.time() - started)
            del stream
            held_stream = collect(model, [p.ids.to(where) for p in held], seed=1)
            tuned.meta["held_out_kl"] = {
                "logit": _round(kl_to_final(read, held_stream).cpu().numpy(), 4),
                "tuned": _round(kl_to_final(read, held_stream, tuned).cpu().numpy(), 4),
            }
            log(f"wrote {tuned.save(cache)}")
        else:
            tuned = TunedLens.load(cache, name).to(where)
        lens_info = {"cache": str(cache), **tuned.meta}
        log(kl_table(tuned.meta.get("held_out_kl")))
        lenses["tuned"] = tuned
    bar = tqdm(total=len(prompts) * len(specs), desc="depth", unit="forward")
    results = {label: measure(model, prompts, spec, lenses, bar.update) for label, spec in specs.items()}
    bar.close()
    summary = summarize(prompts, results)
    kinds = {kind: list(dict.fromkeys(p.task for p in prompts if p.kind == kind)) for kind in KINDS}
    header = {
        "model": name,
        "model_args": model_args,
        "tasks": task_list,
        "limit": limit,
        "layers": int(read_layers(model)),
        "interventions": {label: spec.to_dict() for label, spec in specs.items()},
        "tuned_lens": lens_info,
        "reading": "last position of prompt + any whitespace of the answer fed as generated; rank 1 = top token",
    }
    return [
        write_json(folder / "depth.json", header, prompts, results, summary),
        plot(folder / "depth.png", summary, f"{name}: gold answer's first token by layer", kinds),
    ]


def read_layers(model: Any) -> int:
    return int(getattr(model.config, "num_hidden_layers", 0))


def kl_table(table: dict[str, list[float]] | None) -> str:
    """The held-out KL(final || lens) per layer, logit lens beside tuned lens, as printed and kept in docs/findings.md."""
    if not table:
        return "tuned lens: no held-out KL recorded"
    lines = ["layer  KL logit lens  KL tuned lens  (nats, held-out prompts)"]
    lines += [f"{i:5d}  {a:13.4f}  {b:13.4f}" for i, (a, b) in enumerate(zip(table["logit"], table["tuned"]))]
    return "\n".join(lines)
