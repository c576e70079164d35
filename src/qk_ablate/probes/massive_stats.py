"""The statistics observer: M matrices and massive-dim masks of Q/K/V, reduced as the forward runs.

An `Attachment` observer receives each prefill tensor; only `[H, D]` sums are kept, never the
activations themselves, and they stay on the model's device (no host sync per layer).
`profile.py` turns them into a saved `Profile`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from qk_ablate.core.selection import column_norms, massive_mask_threshold
from qk_ablate.core.spec import InterventionSpec
from qk_ablate.core.step import TensorSite
from qk_ablate.engines.hf.attachment import Attachment


@dataclass
class MassiveStats:
    """Per (layer, tensor, where): summed M matrices, summed massive masks, summed mean-fill norm
    ratios, and the sample count."""

    lam: float = 5.0
    norms: dict[tuple[int, str, str], torch.Tensor] = field(default_factory=dict)
    massive: dict[tuple[int, str, str], torch.Tensor] = field(default_factory=dict)
    kept: dict[tuple[int, str, str], torch.Tensor] = field(default_factory=dict)
    samples: dict[tuple[int, str, str], int] = field(default_factory=dict)

    def __call__(self, site: TensorSite, x: torch.Tensor, prompt: torch.Tensor | None) -> None:
        key = (site.layer, site.name, site.where)
        norms = column_norms(x, prompt)  # [B, H, D]
        mask = massive_mask_threshold(norms, self.lam)
        # Sums stay on the model's device: no host copy (and sync) per layer during the forward.
        self.norms[key] = self.norms.get(key, 0) + norms.sum(0, dtype=torch.float32)
        self.massive[key] = self.massive.get(key, 0) + mask.sum(0)
        self.kept[key] = self.kept.get(key, 0) + mean_fill_norm_ratio(x, prompt, norms).sum(0)
        self.samples[key] = self.samples.get(key, 0) + x.shape[0]

    def mean_norms(self, layer: int, name: str, where: str) -> torch.Tensor:
        """M averaged over samples: `[H, D]` on the CPU."""
        key = (layer, name, where)
        return self.norms[key].cpu() / self.samples[key]

    def massive_fraction(self, layer: int, name: str, where: str) -> torch.Tensor:
        """How often each (head, dim) was massive across samples: `[H, D]` in [0, 1], on the CPU."""
        key = (layer, name, where)
        return self.massive[key].cpu().float() / self.samples[key]

    def mean_kept(self, layer: int, name: str, where: str) -> torch.Tensor:
        """The mean-fill norm ratio averaged over samples: `[H, D]` on the CPU."""
        key = (layer, name, where)
        return self.kept[key].cpu() / self.samples[key]

    def massive_count(self, layer: int, name: str, where: str) -> float:
        """Mean number of massive (head, dim) columns per sample in this layer and tensor."""
        return float(self.massive_fraction(layer, name, where).sum())

    def layers(self) -> list[int]:
        return sorted({layer for layer, _, _ in self.samples})


def mean_fill_norm_ratio(x: torch.Tensor, valid: torch.Tensor | None, norms: torch.Tensor) -> torch.Tensor:
    """What `fill=mean` keeps of each column's norm over the prompt: |mean| / root mean square,
    `[B, H, D]` in [0, 1] (1: a constant column, whose mean fill changes nothing; 0: a column
    that averages to zero). `norms` is `column_norms(x, valid)`."""
    x = x.float()
    if valid is not None:
        x = x * valid[:, None, :, None].to(x.dtype)
        count = valid.sum(dim=1).to(x.dtype).clamp(min=1)[:, None, None]
    else:
        count = torch.full((x.shape[0], 1, 1), float(x.shape[2]), dtype=x.dtype, device=x.device)
    total = x.sum(dim=2).abs()  # |n * mean|
    return (total / (count.sqrt() * norms.clamp(min=1e-30))).clamp(max=1.0)


@torch.no_grad()
def collect_massive_stats(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    where: tuple[str, ...] = ("pre", "post"),
    lam: float = 5.0,
    spec: InterventionSpec | None = None,
    after: bool = False,
) -> MassiveStats:
    """Run `model` on `batches` (input_ids, attention_mask) and return the reduced statistics.

    `spec`: an intervention attached while the statistics are taken (default: none); `after`:
    take each tensor as the intervention left it (the fingerprint of a quantizer), not as it came.

    No KV cache and logits for the last position only: at 128k tokens a cache or full-sequence
    logits would cost more memory than the statistics' whole reason for existing.
    """
    stats = MassiveStats(lam=lam)
    lean = _lean_forward_kwargs(model)
    with Attachment(model, spec or InterventionSpec(), observer=stats, observe=where, after=after):
        for batch in batches:
            model(**batch, **lean)
    return stats


def _lean_forward_kwargs(model: nn.Module) -> dict[str, object]:
    params = inspect.signature(model.forward).parameters
    lean = {"use_cache": False, "logits_to_keep": 1}
    return {name: value for name, value in lean.items() if name in params}
