"""What travels between the driver (`lm`) and vLLM's workers (`extension`) besides the spec: the
registered prompts one way, the edit counts back; plain data both ways.

vLLM sends `collective_rpc` arguments and answers as msgpack (msgspec), which without
`VLLM_ALLOW_INSECURE_SERIALIZATION` carries plain data only. The wire forms here use lists, maps
keyed by strings or ints, strings and numbers: a map keyed by token tuples would become a map keyed
by arrays, which msgspec happens to read back as tuples but msgpack in general does not allow. The
spec and the selection tally have their own wire forms in `core` (`InterventionSpec.to_wire`,
`SelectionTally.to_wire`). Torch-free, so the driver and pure tests read it without a worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from qk_ablate.core.vocabulary import TensorName

Phase = Literal["prefill", "decode"]  # prompts' tokens; decoded tokens (`stage=all`)
PromptLengths = Mapping[tuple[int, ...], int]  # an input's tokens -> how many of them are its prompt
PromptsWire = list[list[Any]]  # [[token ids, prompt length], ...]


def prompts_to_wire(lengths: PromptLengths) -> PromptsWire:
    """Registered inputs as `[[token ids, prompt length], ...]`."""
    return [[list(tokens), int(length)] for tokens, length in lengths.items()]


def prompts_from_wire(data: Sequence[Sequence[Any]]) -> dict[tuple[int, ...], int]:
    """The inputs `prompts_to_wire` sent, keyed by their tokens again."""
    return {tuple(int(t) for t in tokens): int(length) for tokens, length in data}


@dataclass
class EditCounts:
    """What a worker's attachment has edited: sequences prefilled, sequences recognised as preempted
    and recomputed, and per phase, layer and tensor the tokens edited. Summed over workers with `+`."""

    prefills: int = 0
    recomputed: int = 0
    tokens: dict[Phase, dict[int, dict[TensorName, int]]] = field(default_factory=dict)

    def add(self, phase: Phase, layer: int, name: TensorName, count: int) -> None:
        """Count `count` more tokens of `name` edited in `layer` during `phase`."""
        per_name = self.tokens.setdefault(phase, {}).setdefault(layer, {})
        per_name[name] = per_name.get(name, 0) + count

    def of(self, phase: Phase, layer: int, name: TensorName) -> int:
        """Tokens of `name` edited in `layer` during `phase` (0: none, or a tensor left alone)."""
        return self.tokens.get(phase, {}).get(layer, {}).get(name, 0)

    def __add__(self, other: EditCounts) -> EditCounts:
        total = EditCounts(self.prefills + other.prefills, self.recomputed + other.recomputed)
        for counts in (self, other):
            for phase, layers in counts.tokens.items():
                for layer, names in layers.items():
                    for name, count in names.items():
                        total.add(phase, layer, name, count)
        return total

    def to_wire(self) -> dict[str, Any]:
        """Plain data, for a worker's answer to the driver (layers are int keys, which msgpack keeps)."""
        tokens = {
            phase: {layer: dict(names) for layer, names in layers.items()} for phase, layers in self.tokens.items()
        }
        return {"prefills": self.prefills, "recomputed": self.recomputed, "tokens": tokens}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> EditCounts:
        counts = cls(int(data.get("prefills", 0)), int(data.get("recomputed", 0)))
        for phase, layers in dict(data.get("tokens", {})).items():
            for layer, names in layers.items():
                for name, count in names.items():
                    counts.add(phase, int(layer), name, int(count))
        return counts
