"""The record of a run, one for every engine: what `config.qk_ablate` and `config.qk_ablate_selected`
hold in lm-eval's results JSON, written by `run_record` and read back by `read_record`.

Torch-free, so `stats.runs` reads results without loading an engine. The selection tallies are a
typed `SelectionTally`, summed over a model's devices or an engine's workers (each holds its own
heads) with `+`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from qk_ablate._version import __version__
from qk_ablate.core.spec import InterventionSpec
from qk_ablate.core.vocabulary import TensorName

EngineName = Literal["hf", "vllm"]


@dataclass(frozen=True)
class SelectionTally:
    """Per tensor: the (head, dim) columns a run selected, and the (prompt, layer, head) triples it
    selected them from."""

    selected: Mapping[TensorName, int] = field(default_factory=dict)
    heads: Mapping[TensorName, int] = field(default_factory=dict)

    def __add__(self, other: SelectionTally) -> SelectionTally:
        def total(a: Mapping[TensorName, int], b: Mapping[TensorName, int]) -> dict[TensorName, int]:
            return {name: a.get(name, 0) + b.get(name, 0) for name in sorted({*a, *b})}

        return SelectionTally(total(self.selected, other.selected), total(self.heads, other.heads))

    def summary(self) -> dict[str, dict[str, float]]:
        """The results JSON's `qk_ablate_selected`: per tensor, columns chosen per prompt head, and the heads."""
        return {
            name: {
                "dims_per_head": round(count / self.heads[name], 4) if self.heads.get(name) else 0.0,
                "heads": self.heads.get(name, 0),
            }
            for name, count in sorted(self.selected.items())
        }

    def to_wire(self) -> dict[str, dict[str, int]]:
        """Plain data, for a worker's answer to the driver."""
        return {
            "selected": {name: count for name, count in self.selected.items()},
            "heads": {name: count for name, count in self.heads.items()},
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Mapping[str, int]]) -> SelectionTally:
        return cls(dict(data.get("selected", {})), dict(data.get("heads", {})))  # type: ignore[arg-type]


@dataclass(frozen=True)
class RunRecord:
    """What produced a results file: the model as the user named it, the engine, qk-ablate's version
    and the intervention (the spec's `to_dict`)."""

    model: str | None
    engine: str
    version: str | None
    intervention: dict[str, Any]


def run_record(model: str, engine: EngineName, spec: InterventionSpec, tally: SelectionTally) -> dict[str, Any]:
    """The entries both engines add to lm-eval's model info (`get_model_info`), so every results file
    says exactly which intervention, on which engine, produced it, and what its selection chose."""
    info: dict[str, Any] = {"qk_ablate": {"model": model, "version": __version__, "engine": engine, **spec.to_dict()}}
    selected = tally.summary()
    if selected:
        info["qk_ablate_selected"] = selected
        warn_if_nothing_selected(spec, selected)
    return info


def read_record(config: Mapping[str, Any]) -> RunRecord:
    """The record in a results file's `config` (files written before `engine` was recorded are HF runs)."""
    entry = dict(config.get("qk_ablate") or {})
    model = entry.pop("model", None)
    version = entry.pop("version", None)
    engine = str(entry.pop("engine", "hf"))
    return RunRecord(model=None if model is None else str(model), engine=engine, version=version, intervention=entry)


def warn_if_nothing_selected(spec: InterventionSpec, selected: Mapping[str, Mapping[str, float]]) -> None:
    """A run labelled `ablate=massive` that selected no dim on any prompt changed nothing: say so."""
    empty = [name for name, count in selected.items() if count["heads"] and not count["dims_per_head"]]
    if empty:
        print(
            f"qk-ablate: warning: {spec.select} selection chose no dim of {'/'.join(e.upper() for e in empty)} "
            f"on any prompt (lam={spec.lam}), so this run left them unchanged; lower lam or use select=topk",
            file=sys.stderr,
        )
