"""A prefill's per-sample decisions (columns, fill, protected dims), kept for the steps after it.

`stage=all` applies them to every new token, and tensors rebuilt from a latent cache each step
(MLA) get the prompt's edit again. HF generation keeps them per batch; vLLM, whose steps mix
samples of different batches, keeps them per sample at a slot (`Step.slots`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qk_ablate.core.step import Step
from qk_ablate.errors import QKAblateError

Key = tuple[int, str]  # (layer, tensor name)


@dataclass
class Kept:
    """One tensor's decisions for a batch (or the samples at some slots)."""

    columns: torch.Tensor | None
    fill: torch.Tensor | None
    protect: torch.Tensor | None
    edited: torch.Tensor | None = None  # the [B, P] positions the prefill edited (None: all)
    length: int = 0  # P, the prefill's length


class Decisions:
    """The kept decisions of every edited tensor: per batch, or per sample slot."""

    def __init__(self) -> None:
        self._batch: dict[Key, Kept] = {}
        self._slotted: dict[Key, Kept] = {}

    def new_batch(self) -> None:
        """A prefill of a whole batch: the previous batch's decisions are over."""
        self._batch.clear()

    def clear(self) -> None:
        """Forget everything (on detach: they hold device tensors)."""
        self._batch.clear()
        self._slotted.clear()

    def keep(self, step: Step, key: Key, kept: Kept) -> None:
        """Remember a prefill's decisions, for its batch or at its samples' slots."""
        if step.slots is None:
            self._batch[key] = kept
            return
        old = self._slotted.get(key) or Kept(None, None, None)
        slots, count = step.slots, step.slot_count
        self._slotted[key] = Kept(
            _store(old.columns, kept.columns, slots, count),
            _store(old.fill, kept.fill, slots, count),
            _store(old.protect, kept.protect, slots, count),
        )

    def find(self, step: Step, key: Key) -> Kept:
        """The decisions of this decode step's samples, or a one-line error when their prefill was never seen."""
        kept = (self._batch if step.slots is None else self._slotted).get(key)
        if kept is None:
            raise QKAblateError("a decode step came without its prefill; start generation from an empty cache")
        if step.slots is None:
            return kept
        slots = step.slots
        return Kept(_rows(kept.columns, slots), _rows(kept.fill, slots), _rows(kept.protect, slots))


def _store(
    store: torch.Tensor | None, value: torch.Tensor | None, slots: torch.Tensor, count: int
) -> torch.Tensor | None:
    """`value`'s per-sample rows written at `slots` of a `[count, ...]` store (grown as needed)."""
    if value is None or value.dim() == 0:  # nothing, or one value for every sample (zero fill)
        return value
    if store is None or store.dim() == 0 or store.shape[1:] != value.shape[1:] or store.device != value.device:
        store = value.new_zeros((0, *value.shape[1:]))
    if store.shape[0] < count:
        store = torch.cat([store, value.new_zeros((count - store.shape[0], *value.shape[1:]))])
    store[slots.to(value.device)] = value
    return store


def _rows(store: torch.Tensor | None, slots: torch.Tensor) -> torch.Tensor | None:
    """The stored decisions of the samples at `slots` (a value shared by all samples as it is)."""
    if store is None or store.dim() == 0:
        return store
    return store[slots.to(store.device)]
