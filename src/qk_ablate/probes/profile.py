"""A massive-value profile: M matrices and massive fractions per length, saved and summarised.

`profile_model` reduces the statistics observer (`massive_stats`) at several context lengths
into a `Profile` of `[layers, H, D]` arrays; `summarize` turns it into the JSON summary of
`qk-ablate profile` (massive dims per layer and head, counts, concentration, each dim's RoPE
pair, frequency, wavelength and band, and how much of the massive columns' norm `fill=mean`
keeps); `save_profile` / `load_profile` write and read it.
The pictures are `figures.py`'s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qk_ablate.core.vocabulary import TensorName
from qk_ablate.engines.hf.arch import find_layout
from qk_ablate.engines.hf.rope import RopeDims, model_rope_dims
from qk_ablate.errors import QKAblateError
from qk_ablate.probes.massive_stats import MassiveStats, collect_massive_stats
from qk_ablate.task_data.catalogue import PROFILE_SOURCES

_QK: tuple[TensorName, ...] = ("q", "k")  # the tensors whose rotary dims are compared with Q's post-RoPE ones
MOSTLY = 0.5  # a (head, dim) counts as massive when it is massive in at least half the samples


@dataclass
class Profile:
    """`[layers, H, D]` arrays per (length, where, tensor, kind), plus what they were taken on.

    kind `M`: mean column norms; kind `massive`: the fraction of samples in which a (head, dim)
    was massive; kind `kept`: the share of each column's norm that `fill=mean` keeps (|mean| / rms).
    The same arrays are saved to profile.npz, so `load_profile` restores a Profile
    (and its pictures) from a saved folder.
    """

    model: str
    lengths: list[int]
    samples: int
    lam: float
    source: str
    rope: RopeDims | None  # post-RoPE Q's dims (every Q/K tensor's, for most models)
    where: tuple[str, ...]
    arrays: dict[str, np.ndarray]
    other_rope: dict[str, RopeDims] = field(default_factory=dict)  # "<where>_<name>" laid out otherwise (MLA)

    def rope_of(self, where: str, name: str) -> RopeDims | None:
        """The rotary pair of each dim of one tensor (None for V, which does not rotate)."""
        return None if name == "v" else self.other_rope.get(f"{where}_{name}", self.rope)

    @staticmethod
    def key(length: int, where: str, name: str, kind: str) -> str:
        return f"L{length}_{where}_{name}_{kind}"

    def array(self, length: int, where: str, name: str, kind: str = "M") -> np.ndarray:
        return self.arrays[self.key(length, where, name, kind)]


def _arrays(stats: MassiveStats, length: int, where: tuple[str, ...]) -> dict[str, np.ndarray]:
    out = {}
    for w in where:
        for name in "qkv":
            kinds = (("M", stats.mean_norms), ("massive", stats.massive_fraction), ("kept", stats.mean_kept))
            for kind, get in kinds:
                out[Profile.key(length, w, name, kind)] = np.stack(
                    [get(layer, name, w).numpy() for layer in stats.layers()]
                )
    return out


def profile_model(
    model: nn.Module,
    documents: Mapping[int, Iterable[dict[str, torch.Tensor]]],
    model_name: str,
    source: str,
    lam: float = 5.0,
) -> Profile:
    """Reduce statistics for each length's batches (`documents[length]`), pre and post RoPE."""
    layout = find_layout(model)
    where = ("pre", "post") if layout.has_rope and layout.post_rope else ("pre",)  # falcon: pre only
    rope = model_rope_dims(model) if layout.has_rope else None
    other = {}
    if rope is not None:
        for w in where:
            for name in _QK:
                dims = model_rope_dims(model, where=w, name=name)
                if dims != rope:
                    other[f"{w}_{name}"] = dims
    arrays: dict[str, np.ndarray] = {}
    samples = None
    for length, batches in documents.items():
        stats = collect_massive_stats(model, batches, where=where, lam=lam)  # reduced as the forward runs
        arrays.update(_arrays(stats, length, where))
        counted = min(stats.samples.values())
        samples = counted if samples is None else min(samples, counted)
    return Profile(model_name, sorted(documents), int(samples or 0), lam, source, rope, where, arrays, other)


def run_profile(
    model: nn.Module,
    tokenizer: Any,
    model_name: str,
    lengths: list[int],
    samples: int = 10,
    source: str = "ctxqa",
    lam: float = 5.0,
) -> Profile:
    """Profile `model` on `samples` prompts of `source` (a task's documents) at each length.

    Prompts are built at exactly each length in the model's own tokens; lengths beyond the
    model's window are refused before any forward runs.
    """
    from tqdm import tqdm

    from qk_ablate.task_data.ctxqa import build_ctxqa_docs
    from qk_ablate.task_data.niah import build_niah_docs
    from qk_ablate.task_data.passkey import build_passkey_docs

    builders: dict[str, Callable[..., list[dict[str, Any]]]] = {
        "ctxqa": build_ctxqa_docs,
        "passkey": build_passkey_docs,
        "niah": build_niah_docs,
    }
    if source not in builders:
        raise QKAblateError(f"profile source '{source}' is not one of {', '.join(PROFILE_SOURCES)}")
    if not lengths or samples < 1:
        raise QKAblateError("a profile needs at least one length (e.g. 1k,2k) and at least 1 sample")
    window = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    if window and max(lengths) > window:
        raise QKAblateError(
            f"profile lengths go up to {max(lengths)} tokens but {model_name} has a window of {window}; use shorter lengths"
        )
    device = next(model.parameters()).device
    documents = {
        length: [
            {"input_ids": tokenizer(doc["input"], return_tensors="pt").input_ids.to(device)}
            for doc in builders[source](tokenizer, length, num_docs=samples, gen_budget=0)
        ]
        for length in sorted(lengths)
    }
    progress = tqdm(total=samples * len(documents), desc=f"profile {model_name}")

    def counted(batches: list[dict[str, torch.Tensor]]) -> Iterable[dict[str, torch.Tensor]]:
        for batch in batches:
            yield batch
            progress.update(1)

    try:
        return profile_model(model, {L: counted(b) for L, b in documents.items()}, model_name, source, lam)
    finally:
        progress.close()


def load_profile(folder: str | Path) -> Profile:
    """A Profile back from the profile.npz and profile.json that `save_profile` wrote."""
    root = Path(folder)
    try:
        summary = json.loads((root / "profile.json").read_text(encoding="utf-8"))
        with np.load(root / "profile.npz") as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise QKAblateError(
            f"'{folder}' holds no readable profile.json and profile.npz ({type(exc).__name__})"
        ) from None
    rope, other = None, {}
    if summary.get("rope"):
        context = summary["rope"]["context"]
        rope = _rope_from_json(summary["rope"]["dims"], context)
        other = {key: _rope_from_json(dims, context) for key, dims in (summary.get("rope_other") or {}).items()}
    where = tuple(summary["results"][str(summary["lengths"][0])])
    return Profile(
        summary["model"],
        summary["lengths"],
        summary["samples_per_length"],
        summary["lam"],
        summary["source"],
        rope,
        where,
        arrays,
        other,
    )


def _rope_to_json(rope: RopeDims) -> list[dict]:
    return [{"dim": d, **rope.as_dict(d)} for d in range(len(rope.pair))]


def _rope_from_json(dims: list[dict], context: int) -> RopeDims:
    return RopeDims(
        tuple(d["pair"] for d in dims),
        tuple(d["frequency"] for d in dims),
        tuple(d["wavelength"] if d["wavelength"] is not None else float("inf") for d in dims),
        tuple(d["band"] for d in dims),
        context,
    )


def _layer_summary(massive: np.ndarray, norms: np.ndarray, rope: RopeDims | None) -> dict:
    """One layer's `[H, D]` massive fractions and mean norms as JSON-ready facts.

    `top_pair` is the rotary pair that the most heads of this layer have a massive dim in, and
    `top_pair_heads` the share of heads that do (1.0: every head, the paper's picture).
    """
    heads, dims = np.nonzero(massive >= MOSTLY)
    mean = norms.mean(axis=1, keepdims=True)
    top2 = np.sort(norms, axis=1)[:, -2:].sum(axis=1) / np.maximum(norms.sum(axis=1), 1e-12)
    agreement: dict = {}
    if rope is not None and len(heads):
        per_pair: dict[int, set[int]] = {}
        for h, d in zip(heads, dims):
            if rope.pair[d] >= 0:
                per_pair.setdefault(rope.pair[d], set()).add(int(h))
        if per_pair:
            pair = max(sorted(per_pair), key=lambda p: len(per_pair[p]))
            agreement = {"top_pair": pair, "top_pair_heads": round(len(per_pair[pair]) / massive.shape[0], 3)}
    return {
        "count": int(len(heads)),
        "massive": [
            {
                "head": int(h),
                "dim": int(d),
                "fraction": round(float(massive[h, d]), 3),
                "ratio": round(float(norms[h, d] / max(mean[h, 0], 1e-12)), 2),
                **({"pair": rope.pair[d]} if rope else {}),
            }
            for h, d in zip(heads, dims)
        ],
        "peak_to_mean": round(float((norms.max(axis=1) / np.maximum(mean[:, 0], 1e-12)).mean()), 2),
        "top2_share": round(float(top2.mean()), 3),
        **agreement,
    }


def _pair_agreement(massive: np.ndarray, rope: RopeDims) -> list[dict]:
    """For each rotary pair: the share of (layer, head) slots where one of its dims is massive."""
    hit = massive >= MOSTLY  # [L, H, D]
    slots = hit.shape[0] * hit.shape[1]
    pairs: dict[int, np.ndarray] = {}
    for dim, pair in enumerate(rope.pair):
        if pair >= 0:
            pairs[pair] = pairs.get(pair, np.zeros(hit.shape[:2], dtype=bool)) | hit[:, :, dim]
    rows = []
    for pair, mask in pairs.items():
        share = float(mask.sum()) / slots
        if share > 0:
            dims = [d for d, p in enumerate(rope.pair) if p == pair]
            rows.append(
                {
                    "pair": pair,
                    "dims": dims,
                    "share_of_heads": round(share, 3),
                    "layers": int(mask.any(axis=1).sum()),
                    **rope.as_dict(dims[0]),
                }
            )
    return sorted(rows, key=lambda r: -r["share_of_heads"])


def summarize(profile: Profile) -> dict:
    """The JSON summary of a profile (see the module docstring)."""
    out: dict = {
        "model": profile.model,
        "lengths": profile.lengths,
        "samples_per_length": profile.samples,
        "lam": profile.lam,
        "massive_when_in_fraction_of_samples": MOSTLY,
        "source": profile.source,
        "rope": None
        if profile.rope is None
        else {"context": profile.rope.context, "dims": _rope_to_json(profile.rope)},
        **(
            {"rope_other": {key: _rope_to_json(dims) for key, dims in profile.other_rope.items()}}
            if profile.other_rope
            else {}
        ),
        "results": {},
    }
    for length in profile.lengths:
        per_length: dict = {}
        for where in profile.where:
            per_where: dict = {}
            for name in ("q", "k", "v"):
                massive = profile.array(length, where, name, "massive")
                norms = profile.array(length, where, name, "M")
                rope = profile.rope_of(where, name)
                layers = [{"layer": i, **_layer_summary(massive[i], norms[i], rope)} for i in range(massive.shape[0])]
                entry = {"layers_with_massive": sum(1 for layer in layers if layer["count"]), "layers": layers}
                shares = [layer["top_pair_heads"] for layer in layers if "top_pair_heads" in layer]
                if shares:  # within a layer, how many heads share its most common massive pair
                    entry["mean_top_pair_heads"] = round(float(np.mean(shares)), 3)
                if rope is not None:
                    entry["pairs"] = _pair_agreement(massive, rope)
                kept = profile.arrays.get(profile.key(length, where, name, "kept"))  # absent in older profiles
                chosen = massive >= MOSTLY
                if kept is not None and chosen.any():
                    ratios = kept[chosen]
                    entry["mean_fill_keeps"] = {
                        "median": round(float(np.median(ratios)), 4),
                        "min": round(float(ratios.min()), 4),
                        "columns": int(ratios.size),
                    }
                per_where[name] = entry
            per_length[where] = per_where
        out["results"][str(length)] = per_length
    return out


def headline(profile: Profile) -> str:
    """A few printed lines per length: where Q and K are massive and how many heads agree."""
    lines = []
    for length, per_length in summarize(profile)["results"].items():
        for where, per_where in per_length.items():
            for name in ("q", "k"):
                entry = per_where[name]
                top = entry.get("pairs", [])[:3]
                pairs = ", ".join(
                    f"pair {p['pair']} ({p['band']}, {100 * p['share_of_heads']:.0f}% of heads)" for p in top
                )
                agree = entry.get("mean_top_pair_heads")
                same = "" if agree is None else f"; within a layer {100 * agree:.0f}% of heads share the top pair"
                kept = entry.get("mean_fill_keeps")
                norm = "" if kept is None else f"; fill=mean keeps {100 * kept['median']:.1f}% of their norm (median)"
                lines.append(
                    f"{length:>6} {where:>4}-RoPE {name.upper()}: massive in {entry['layers_with_massive']} layers{same}; "
                    f"overall {pairs}{norm}"
                )
    return "\n".join(lines)


def save_profile(profile: Profile, folder: str | Path) -> list[Path]:
    """profile.npz (M and massive fractions, `[layers, H, D]` per length/where/tensor) and
    profile.json (the summary); `figures.save_heatmaps` draws the pictures."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    # numpy's stub: a **dict might hold `allow_pickle: bool`, so mypy refuses arrays for it
    np.savez_compressed(out / "profile.npz", **profile.arrays)  # type: ignore[arg-type]
    (out / "profile.json").write_text(json.dumps(summarize(profile), indent=1) + "\n", encoding="utf-8")
    return [out / "profile.npz", out / "profile.json"]
