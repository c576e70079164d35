"""The fingerprint: how far apart two models' massive-value structures are, with no task run.

Two checkpoints, or one checkpoint under two interventions (`quant=int4` against none), read
the same prompts; each Q and K tensor is taken as the intervention left it (the statistics
observer with `after=True`), post-RoPE by default. Per layer and tensor it compares:

* **massive set**: the (head, dim) columns that are massive (M > lam x the head's mean M, the
  paper's Definition 1) in at least half of the prompts (as `qk-ablate profile` counts them);
* **overlap**: Jaccard |A & B| / |A | B| of the two sets; 1 when both are empty;
* **peak-to-mean**: per head max_d M / mean_d M with M averaged over the prompts, then averaged
  over the heads (K per KV head);
* **appeared / vanished pairs**: rotary pairs with a massive dim in some head of the layer in the
  candidate and in no head of the baseline, and the reverse (dims, on a model without RoPE).

One number, **distance** = mean over layers and {Q, K} of (1 - overlap) + |ln(peak-to-mean of
the candidate / of the baseline)|: exactly 0 when every layer's sets and ratios agree; a layer
that keeps half its set adds 0.5, one whose ratio doubles adds 0.69.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qk_ablate.core.spec import InterventionSpec
from qk_ablate.core.vocabulary import TensorName
from qk_ablate.errors import QKAblateError
from qk_ablate.probes.massive_stats import collect_massive_stats
from qk_ablate.probes.profile import MOSTLY

TENSORS: tuple[TensorName, ...] = ("q", "k")
DEFINITIONS = {
    "massive_set": f"(head, dim) with M > lam x the head's mean M in at least {MOSTLY:g} of the prompts",
    "overlap": "Jaccard |A & B| / |A | B| of the baseline's and the candidate's massive sets (1 when both are empty)",
    "peak_to_mean": "per head max_d M / mean_d M (M averaged over prompts), averaged over the layer's heads",
    "appeared_pairs": "rotary pairs massive in some head of the layer in the candidate and in none of the baseline",
    "distance": "mean over layers and {q, k} of (1 - overlap) + |ln(candidate peak_to_mean / baseline peak_to_mean)|",
}


@dataclass
class Side:
    """One model's statistics: per tensor, `[layers, H, D]` mean M and massive fraction, and each dim's pair."""

    label: str
    norms: dict[TensorName, np.ndarray]
    massive: dict[TensorName, np.ndarray]
    pairs: dict[TensorName, tuple[int, ...]]
    rotary: bool  # False: `pairs` are plain dims (a model without RoPE)


def measure(
    model: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    label: str,
    where: str = "post",
    lam: float = 5.0,
    spec: InterventionSpec | None = None,
) -> Side:
    """Statistics of `model` on `batches`, each tensor as `spec` (default: none) left it."""
    from qk_ablate.engines.hf.rope import model_rope_dims

    stats = collect_massive_stats(model, batches, where=(where,), lam=lam, spec=spec, after=True)
    layers = stats.layers()
    if not layers:
        raise QKAblateError("the fingerprint saw no prompt; give at least one length and one sample")
    norms = {t: np.stack([stats.mean_norms(i, t, where).numpy() for i in layers]) for t in TENSORS}
    massive = {t: np.stack([stats.massive_fraction(i, t, where).numpy() for i in layers]) for t in TENSORS}
    try:
        pairs = {t: model_rope_dims(model, where=where, name=t).pair for t in TENSORS}
        rotary = True
    except QKAblateError:  # no inv_freq: name plain dims instead
        pairs, rotary = {t: tuple(range(norms[t].shape[-1])) for t in TENSORS}, False
    return Side(label, norms, massive, pairs, rotary)


def peak_to_mean(norms: np.ndarray) -> float:
    """`[H, D]` M -> max over dims / mean over dims, averaged over heads."""
    norms = norms.astype(np.float64)
    return float((norms.max(axis=1) / np.maximum(norms.mean(axis=1), 1e-12)).mean())


def _pairs(mask: np.ndarray, pair: tuple[int, ...]) -> set[int]:
    return {pair[d] for d in np.nonzero(mask.any(axis=0))[0] if pair[d] >= 0}


def compare(base: Side, cand: Side) -> dict[str, Any]:
    """Per layer overlap, peak-to-mean and appeared/vanished pairs, and the distance (module docstring)."""
    for t in TENSORS:
        if base.norms[t].shape != cand.norms[t].shape:
            raise QKAblateError(
                f"{t.upper()} is {'x'.join(map(str, base.norms[t].shape))} (layers x heads x dims) in the baseline "
                f"but {'x'.join(map(str, cand.norms[t].shape))} in the candidate; a fingerprint compares models of one shape"
            )
    layers, terms = [], []
    for i in range(base.norms["q"].shape[0]):
        row: dict[str, Any] = {"layer": i}
        for t in TENSORS:
            a, b = base.massive[t][i] >= MOSTLY, cand.massive[t][i] >= MOSTLY
            union = int((a | b).sum())
            overlap = 1.0 if union == 0 else int((a & b).sum()) / union
            ratio_a, ratio_b = peak_to_mean(base.norms[t][i]), peak_to_mean(cand.norms[t][i])
            change = math.log(ratio_b / ratio_a) if ratio_a > 0 and ratio_b > 0 else 0.0
            pa, pb = _pairs(a, base.pairs[t]), _pairs(b, cand.pairs[t])
            terms.append((1.0 - overlap) + abs(change))
            row[t] = {
                "overlap": round(overlap, 4),
                "massive": [int(a.sum()), int(b.sum())],
                "peak_to_mean": [round(ratio_a, 3), round(ratio_b, 3)],
                "log_ratio": round(change, 4),
                "appeared": int((b & ~a).sum()),
                "vanished": int((a & ~b).sum()),
                "appeared_pairs": sorted(pb - pa),
                "vanished_pairs": sorted(pa - pb),
            }
        layers.append(row)
    mean = lambda values: float(np.mean(values)) if values else 0.0  # noqa: E731
    return {
        "distance": round(mean(terms), 6),
        "overlap": {t: round(mean([r[t]["overlap"] for r in layers]), 4) for t in TENSORS},
        "abs_log_peak_to_mean": {t: round(mean([abs(r[t]["log_ratio"]) for r in layers]), 4) for t in TENSORS},
        "peak_to_mean": {
            t: [round(mean([r[t]["peak_to_mean"][s] for r in layers]), 3) for s in (0, 1)] for t in TENSORS
        },
        "layers_changed": [r["layer"] for r in layers if any(r[t]["appeared"] or r[t]["vanished"] for t in TENSORS)],
        "unit": "pair" if base.rotary else "dim",
        "layers": layers,
    }


def fingerprint(
    base_model: nn.Module,
    cand_model: nn.Module,
    base_batches: list[dict[str, torch.Tensor]],
    cand_batches: list[dict[str, torch.Tensor]] | None = None,
    base_spec: InterventionSpec | None = None,
    cand_spec: InterventionSpec | None = None,
    labels: tuple[str, str] = ("baseline", "candidate"),
    where: str = "post",
    lam: float = 5.0,
) -> dict[str, Any]:
    """Measure both sides on the same prompts (`cand_batches`: the same texts in the candidate's tokens)."""
    if where not in ("pre", "post"):
        raise QKAblateError(f"where={where!r} is not valid; choose post (after RoPE, the default) or pre")
    base = measure(base_model, base_batches, labels[0], where, lam, base_spec)
    same = (
        cand_model is base_model
        and cand_batches is None
        and (cand_spec or InterventionSpec()) == (base_spec or InterventionSpec())
    )
    cand = base if same else measure(cand_model, cand_batches or base_batches, labels[1], where, lam, cand_spec)
    return {
        "baseline": labels[0],
        "candidate": labels[1],
        "where": where,
        "lam": lam,
        "massive_when_in_fraction_of_samples": MOSTLY,
        "definitions": DEFINITIONS,
        **compare(base, cand),
    }


def prompt_texts(tokenizer: Any, lengths: list[int], samples: int, source: str, window: int = 0) -> list[str]:
    """`samples` prompts of `source` (a task's documents) at each length, as `qk-ablate profile` builds them."""
    from qk_ablate.task_data.catalogue import PROFILE_SOURCES
    from qk_ablate.task_data.ctxqa import build_ctxqa_docs
    from qk_ablate.task_data.niah import build_niah_docs
    from qk_ablate.task_data.passkey import build_passkey_docs

    builders: dict[str, Callable[..., list[dict[str, Any]]]] = {
        "ctxqa": build_ctxqa_docs,
        "passkey": build_passkey_docs,
        "niah": build_niah_docs,
    }
    if source not in builders:
        raise QKAblateError(f"fingerprint source '{source}' is not one of {', '.join(PROFILE_SOURCES)}")
    if not lengths or min(lengths) < 1 or samples < 1:
        raise QKAblateError("a fingerprint needs at least one length (e.g. 1k) and at least 1 sample")
    if window and max(lengths) > window:
        raise QKAblateError(
            f"lengths go up to {max(lengths)} tokens but the model's window is {window}; use shorter ones"
        )
    return [
        doc["input"]
        for length in sorted(lengths)
        for doc in builders[source](tokenizer, length, num_docs=samples, gen_budget=0)
    ]


def run_fingerprint(
    baseline: str,
    candidate: str,
    lengths: list[int],
    samples: int = 4,
    source: str = "ctxqa",
    lam: float = 5.0,
    where: str = "post",
    device: str | None = None,
    log=lambda line: None,
) -> dict[str, Any]:
    """Load both model_args strings (once when they name the same checkpoint with the same load
    options) and fingerprint them; every bad value is refused before any model loads."""
    from qk_ablate.models.loading import load_model, parse_model_args

    if where not in ("pre", "post"):
        raise QKAblateError(f"--where {where!r} is not valid; choose post (after RoPE, the default) or pre")
    if not lam > 0:
        raise QKAblateError(f"--lam must be a positive number (the paper uses 5.0), got {lam}")
    if samples < 1 or not lengths or min(lengths) < 1:
        raise QKAblateError("a fingerprint needs at least one length (e.g. 1k) and at least 1 sample")
    parsed = [parse_model_args(text) for text in (baseline, candidate)]
    loads: list[dict[str, Any]] = [{"pretrained": "smollm2-135m", "device": device, **options} for options, _ in parsed]
    models: list[tuple[Any, Any]] = []
    for number, options in enumerate(loads):
        if number and options == loads[0]:
            log("the candidate is the baseline's checkpoint: loaded once")
            models.append(models[0])
            continue
        models.append(load_model(**options))
    (base_model, base_tok), (cand_model, cand_tok) = models
    window = int(getattr(base_model.config, "max_position_embeddings", 0) or 0)
    texts = prompt_texts(base_tok, lengths, samples, source, window)

    def batches(tokenizer: Any, model: nn.Module) -> list[dict[str, torch.Tensor]]:
        to = next(model.parameters()).device
        return [{"input_ids": tokenizer(text, return_tensors="pt").input_ids.to(to)} for text in texts]

    base_batches = batches(base_tok, base_model)
    cand_batches = None if cand_tok is base_tok else batches(cand_tok, cand_model)
    result = fingerprint(
        base_model,
        cand_model,
        base_batches,
        cand_batches,
        parsed[0][1],
        parsed[1][1],
        (baseline, candidate),
        where,
        lam,
    )
    prompts = {"source": source, "lengths": sorted(lengths), "samples_per_length": samples}
    return {**result, "prompts": prompts}


def summary_text(result: dict[str, Any]) -> str:
    """The one-screen summary: the headline numbers, then a line per layer."""
    unit = "p" if result["unit"] == "pair" else "d"
    prompts = result.get("prompts")
    seen = (
        f"; {prompts['samples_per_length']} {prompts['source']} prompts at {prompts['lengths']} tokens"
        if prompts
        else ""
    )
    lines = [
        f"fingerprint {result['where']}-RoPE: {result['baseline']}  ->  {result['candidate']}{seen}",
        f"distance {result['distance']:.4f} (0 = the same massive structure; mean over layers and Q/K of "
        "(1 - overlap) + |ln peak-to-mean change|)",
    ]
    for t in TENSORS:
        before, after = result["peak_to_mean"][t]
        lines.append(
            f"  {t.upper()}: mean overlap {result['overlap'][t]:.3f}, peak-to-mean {before:.2f} -> {after:.2f} "
            f"(mean |ln change| {result['abs_log_peak_to_mean'][t]:.3f})"
        )
    lines.append("layer  overlap Q/K   peak-to-mean Q     peak-to-mean K     appeared (+) / vanished (-) pairs")
    for row in result["layers"]:
        moved = []
        for t in TENSORS:
            moved += [f"+{t.upper()}{unit}{p}" for p in row[t]["appeared_pairs"]]
            moved += [f"-{t.upper()}{unit}{p}" for p in row[t]["vanished_pairs"]]
        ratios = " ".join(f"{row[t]['peak_to_mean'][0]:7.2f} -> {row[t]['peak_to_mean'][1]:<7.2f}" for t in TENSORS)
        changes = " ".join(moved[:6]) + (" ..." if len(moved) > 6 else "")
        lines.append(
            f"{row['layer']:>5}  {row['q']['overlap']:.2f} / {row['k']['overlap']:.2f} {ratios} {changes}".rstrip()
        )
    return "\n".join(lines)


def save_fingerprint(result: dict[str, Any], folder: str | Path) -> list[Path]:
    """fingerprint.json (everything above) and fingerprint.png (overlap, peak-to-mean and changes per layer)."""
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "fingerprint.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        return [out / "fingerprint.json", _figure(result, out / "fingerprint.png")]
    except OSError as exc:
        raise QKAblateError(f"could not write the fingerprint to '{folder}' ({exc.strerror or exc})") from None


def _figure(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["layers"]
    x = [r["layer"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True, layout="constrained")
    colours = {"q": "tab:blue", "k": "tab:orange"}
    for t in TENSORS:
        axes[0].plot(x, [r[t]["overlap"] for r in rows], "o-", color=colours[t], label=t.upper(), markersize=3)
        axes[1].plot(x, [r[t]["peak_to_mean"][0] for r in rows], "--", color=colours[t], label=f"{t.upper()} baseline")
        axes[1].plot(
            x,
            [r[t]["peak_to_mean"][1] for r in rows],
            "o-",
            color=colours[t],
            label=f"{t.upper()} candidate",
            markersize=3,
        )
        shift = -0.2 if t == "q" else 0.2
        axes[2].bar(
            [i + shift for i in x],
            [r[t]["appeared"] for r in rows],
            0.4,
            color=colours[t],
            label=f"{t.upper()} appeared",
        )
        axes[2].bar(
            [i + shift for i in x],
            [-r[t]["vanished"] for r in rows],
            0.4,
            color=colours[t],
            alpha=0.45,
            label=f"{t.upper()} vanished",
        )
    axes[0].set_ylim(-0.03, 1.03)
    axes[0].set_ylabel("overlap (Jaccard)\nof massive sets")
    axes[1].set_yscale("log")
    for axis in (axes[1].yaxis.set_major_formatter, axes[1].yaxis.set_minor_formatter):
        axis(matplotlib.ticker.FormatStrFormatter("%g"))
    axes[1].set_ylabel("peak-to-mean\n(mean over heads, log)")
    axes[2].axhline(0, color="grey", linewidth=0.6)
    axes[2].set_ylabel("massive (head, dim)\nappeared / vanished")
    axes[2].set_xlabel("layer")
    for ax in axes:
        ax.legend(fontsize=7, ncol=4, loc="best")
    fig.suptitle(
        f"{result['where']}-RoPE fingerprint, distance {result['distance']:.3f}\n"
        f"{result['baseline']} -> {result['candidate']}",
        fontsize=9,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
