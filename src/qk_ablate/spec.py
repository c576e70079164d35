"""The intervention spec: our model_args keys parsed once into a frozen, validated object.

Everything downstream (attachment, lm-eval model, reports) reads this object, never the raw
strings, so a results file's `config.qk_ablate` says exactly which intervention produced it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from qk_ablate.errors import QKAblateError
from qk_ablate.vocabulary import CHOICES, check_quantizer, is_noop

__all__ = ["CHOICES", "InterventionSpec", "split_model_args"]

_LAYER_SEPARATORS = re.compile(r"[;+\s]+")


@dataclass(frozen=True)
class InterventionSpec:
    """Which dims, what is done to them, and where (the README's Model arguments). Defaults follow the paper."""

    ablate: str = "none"
    select: str = "threshold"
    lam: float = 5.0
    topk: int = 1
    fill: str = "mean"
    control: str = "random"
    seed: int = 0
    rope: str = "post"
    stage: str = "prefill"
    targets: str = "qk"
    layers: str = "all"
    quant: str = "none"
    quant_targets: str = "k"
    quant_axis: str = "token"
    group: int = 0
    sym: bool = True
    protect: str = "none"

    def __post_init__(self) -> None:
        for key, choices in CHOICES.items():
            if choices is not None and getattr(self, key) not in choices:
                raise QKAblateError(f"{key}={getattr(self, key)!r} is not valid; choose one of: {', '.join(choices)}")
        if not self.lam > 0:
            raise QKAblateError(f"lam={self.lam} must be a positive number (the paper uses 5.0)")
        if self.topk < 1:
            raise QKAblateError(f"topk={self.topk} must be a positive integer")
        if self.quant != "none":
            check_quantizer(self.quant, self.quant_axis, self.group, self.sym)
        elif self.protect != "none":
            raise QKAblateError("protect=massive needs a quantizer; add quant=int4 (or int8|int3|int2|fp8)")
        _parse_layers(self.layers)  # validate the syntax now; the range is checked against the model

    @property
    def is_noop(self) -> bool:
        """True when nothing is changed: the model must then behave bit-identically to the plain one."""
        return is_noop(vars(self))

    @property
    def needs_selection(self) -> bool:
        """True when massive dims must be found (to destroy them, avoid them, or protect them)."""
        return self.ablate != "none" or self.protect == "massive"

    def ablate_targets(self) -> frozenset[str]:
        """Tensors whose dims are destroyed ('q', 'k')."""
        return frozenset(self.targets) if self.ablate != "none" else frozenset()

    def quant_target_set(self) -> frozenset[str]:
        """Tensors that are fake-quantized ('q', 'k', 'v')."""
        return frozenset(self.quant_targets) if self.quant != "none" else frozenset()

    def layer_indices(self, num_layers: int) -> frozenset[int]:
        """The selected layer indices for a model with `num_layers` layers, or a readable error."""
        chosen = _parse_layers(self.layers)
        if chosen is None:
            return frozenset(range(num_layers))
        bad = sorted(i for i in chosen if i >= num_layers)
        if bad:
            raise QKAblateError(
                f"layers={self.layers} names layer {bad[0]}, but the model has {num_layers} layers (0-{num_layers - 1})"
            )
        return chosen

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the results JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> InterventionSpec:
        """Build from already-split model_args values (strings, or lm-eval's literal-evaluated values)."""
        unknown = sorted(set(args) - set(CHOICES))
        if unknown:
            raise QKAblateError(f"unknown intervention key {unknown[0]!r}; valid keys: {', '.join(CHOICES)}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {key: _coerce(key, value, fields[key].default) for key, value in args.items()}
        return cls(**values)


def split_model_args(model_args: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate our keys from HFLM's, so HFLM never passes ours on to `from_pretrained`.

    lm-eval splits model_args strings on every comma, so `layers=0,3,5` arrives as `layers=0`
    plus bare keys `3` and `5`; that case gets a message saying how to write it instead.
    """
    ours = {k: v for k, v in model_args.items() if k in CHOICES}
    rest = {k: v for k, v in model_args.items() if k not in CHOICES}
    stray = [k for k in rest if re.fullmatch(r"\s*\d+(-\d+)?\s*", str(k))]
    if stray:
        raise QKAblateError(
            f"model_args has a bare '{stray[0]}': lm-eval splits model_args on commas, "
            "so list layers with ';' instead, e.g. layers=0;3;5 or layers=0-7"
        )
    return ours, rest


def _coerce(key: str, value: Any, default: Any) -> Any:
    if value is None:  # lm-eval turns the string "none" into None
        value = "none"
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise QKAblateError(f"{key}={value!r} is not valid; use true or false")
    if isinstance(default, int):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise QKAblateError(f"{key}={value!r} is not valid; it must be an integer") from None
        if not number.is_integer():
            raise QKAblateError(f"{key}={value!r} is not valid; it must be an integer")
        return int(number)
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise QKAblateError(f"{key}={value!r} is not valid; it must be a number") from None
    if key == "layers":
        if isinstance(value, Iterable) and not isinstance(value, str):
            value = ";".join(str(v) for v in value)
        return str(value).strip().lower()
    return str(value).strip().lower()


def _parse_layers(text: str) -> frozenset[int] | None:
    """'all' -> None; '0-7' / '0;3;5' / '0-3;8' -> the set of indices."""
    if text == "all":
        return None
    chosen: set[int] = set()
    for part in filter(None, _LAYER_SEPARATORS.split(text)):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise QKAblateError(f"layers={text!r} is not valid; use all, a range 0-7, or a list 0;3;5")
        start = int(match.group(1))
        stop = int(match.group(2)) if match.group(2) else start
        if stop < start:
            raise QKAblateError(f"layers={text!r}: range {part} runs backwards; write it as {stop}-{start}")
        chosen.update(range(start, stop + 1))
    if not chosen:
        raise QKAblateError("layers= is empty; use all, a range 0-7, or a list 0;3;5")
    return frozenset(chosen)
