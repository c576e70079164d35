"""The names an engine hands the core with each tensor: which tensor it is (`TensorSite`) and what
the current forward is (`Step`).

Per-call tensors live on the device of the tensor they edit: a model split over several GPUs runs
its layers on different devices, so a step's masks are copied once per device (never a host sync).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from qk_ablate.core.vocabulary import TensorName, Where


class TensorSite(NamedTuple):
    """One tensor of one attention layer, where an intervention or an observer can act (as
    TransformerLens names `blocks.{layer}.attn.hook_{q,k,v}` and `hook_rot_{q,k}`)."""

    layer: int
    name: TensorName  # q, k or v
    where: Where  # pre: the projection's output; post: after the rotary embedding

    def __str__(self) -> str:
        return f"layers.{self.layer}.{self.where}_rope.{self.name}"


@dataclass
class Step:
    """What the current forward is, for the tensors an engine hands over.

    prompt: [B, S] positions whose statistics select and fill (None: all positions);
    tokens: [B, S] non-padding positions, edited by `stage=all` (None: all positions);
    prefill: the cache was empty, so every position of this forward is new;
    slots: [B] each sample's place in a store of decisions that outlives the batch (vLLM's
    continuous batching, where a later step's decode rows are other samples than this prefill's),
    below `slot_count`; None: the decisions are kept for this batch as a whole (HF generation);
    idle: a decode step that the intervention leaves alone (`IDLE_DECODE`), so callers skip it at once;
    counted: [B] the rows the run record tallies, on the input's device (None: every row). An engine
    that runs one prompt several times (vLLM: once per loglikelihood continuation, where HF runs the
    shared context once) leaves the repeats out, so `heads` means the same on every engine;
    counted_rows: how many of them are True (known on the host, so tallying makes no sync).
    Both masks are on the input's device; `masks(device)` gives them where a layer runs.
    """

    prompt: torch.Tensor | None
    tokens: torch.Tensor | None
    prefill: bool
    slots: torch.Tensor | None = None
    slot_count: int = 0
    idle: bool = False
    counted: torch.Tensor | None = None
    counted_rows: int = 0
    _moved: dict[torch.device, tuple[torch.Tensor | None, torch.Tensor | None]] = field(
        default_factory=dict, repr=False
    )

    def masks(self, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(prompt, tokens) on `device`, copied once per device and forward (asynchronously on GPUs)."""
        if self.prompt is None or self.prompt.device == device:
            return self.prompt, self.tokens
        if device not in self._moved:
            fast = device.type == "cuda"
            prompt = self.prompt.to(device, non_blocking=fast)
            tokens = None if self.tokens is None else self.tokens.to(device, non_blocking=fast)
            self._moved[device] = (prompt, tokens)
        return self._moved[device]


PREFILL = Step(prompt=None, tokens=None, prefill=True)  # a whole batch of prompts, every position real
IDLE_DECODE = Step(prompt=None, tokens=None, prefill=False, idle=True)
