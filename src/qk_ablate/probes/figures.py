"""Heatmaps of a profile: head x dim of the mean column norm M, per layer and averaged over layers.

Every figure uses one colour scale for all its panels, logarithmic (M spans orders of magnitude
between ordinary and massive dims), and says so on its colour bar.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from qk_ablate.probes.profile import Profile


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    return plt, LogNorm


def _norm(arrays: list[np.ndarray]):
    _, LogNorm = _pyplot()
    values = np.concatenate([a.ravel() for a in arrays])
    positive = values[values > 0]
    low = float(positive.min()) if positive.size else 1e-6
    return LogNorm(vmin=max(low, float(values.max()) * 1e-4), vmax=max(float(values.max()), low * 10))


def averaged_heatmap(profile: Profile, where: str, name: str, path: Path) -> Path:
    """One panel per length: M averaged over layers, `[heads, dims]`, shared log colour scale."""
    plt, _ = _pyplot()
    panels = [profile.array(length, where, name).mean(axis=0) for length in profile.lengths]
    norm = _norm(panels)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels) + 1.2, 3.4), squeeze=False, layout="constrained"
    )
    for ax, length, panel in zip(axes[0], profile.lengths, panels):
        image = ax.imshow(panel, aspect="auto", norm=norm, cmap="magma", interpolation="nearest")
        ax.set_title(f"{length} tokens")
        ax.set_yticks(range(panel.shape[0]))
        ax.set_xlabel("dim")
        ax.set_ylabel("head")
    fig.colorbar(image, ax=axes[0].tolist(), label="M over layers\n(log, one scale)")
    fig.suptitle(f"{profile.model}: {where}-RoPE {name.upper()}, {profile.samples} samples per length")
    return _save(fig, path)


def layer_heatmaps(profile: Profile, length: int, where: str, name: str, path: Path) -> Path:
    """A grid with one head x dim panel per layer at one length, shared log colour scale."""
    plt, _ = _pyplot()
    layers = profile.array(length, where, name)
    norm = _norm([layers])
    cols = min(6, layers.shape[0])
    rows = math.ceil(layers.shape[0] / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.6 * cols + 1.0, 1.5 * rows + 0.9), squeeze=False, layout="constrained"
    )
    for index, ax in enumerate(axes.ravel()):
        if index >= layers.shape[0]:
            ax.axis("off")
            continue
        image = ax.imshow(layers[index], aspect="auto", norm=norm, cmap="magma", interpolation="nearest")
        ax.set_title(f"layer {index}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes.ravel().tolist(), label="M (log, one scale for all layers)")
    fig.suptitle(f"{profile.model}: {where}-RoPE {name.upper()} per layer (head x dim), {length} tokens")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    plt, _ = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_heatmaps(profile: Profile, folder: str | Path) -> list[Path]:
    """The PNG heatmaps: every tensor averaged over layers, and Q and K per layer at each length."""
    out = Path(folder)
    written = []
    for where in profile.where:
        for name in "qkv":
            written.append(averaged_heatmap(profile, where, name, out / f"heatmap_{where}_{name}.png"))
        for name in "qk":
            for length in profile.lengths:
                written.append(
                    layer_heatmaps(profile, length, where, name, out / f"layers_{where}_{name}_{length}.png")
                )
    return written
