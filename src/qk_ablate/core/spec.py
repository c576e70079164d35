"""The intervention spec: our model_args keys parsed once into a frozen, validated object.

Everything downstream (attachment, lm-eval model, reports) reads this object, never the raw
strings, so a results file's `config.qk_ablate` says exactly which intervention produced it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from difflib import get_close_matches
from typing import Any, get_args, get_origin, get_type_hints

from qk_ablate.core.vocabulary import (
    KV_GROUP,
    KV_RESIDUAL,
    TENSOR_NAMES,
    Ablate,
    AblateTargets,
    Band,
    Control,
    Exclude,
    Fill,
    KvCache,
    NormDtype,
    Preset,
    Protect,
    Quant,
    QuantAxis,
    QuantTargets,
    Rope,
    Select,
    Stage,
    TensorName,
    check_kv_cache,
    check_quantizer,
    edits_nothing,
    is_noop,
    values,
)
from qk_ablate.errors import QKAblateError

__all__ = ["CHOICES", "LABEL_KEYS", "InterventionSpec", "split_model_args"]

_LAYER_SEPARATORS = re.compile(r"[;+\s]+")
WIRE_VERSION = 1  # the spec's form on its way to an engine's worker (`to_wire` / `from_wire`)


def _key(default: Any, part: str, later: bool = False) -> Any:
    """A model_args key: its default, the part of the intervention it belongs to (`place`: where it acts,
    named in every run's label; `ablation`, `quant`, `kv`: named only while that part is on), and whether it
    came after the first release (`later`: left out of results files while at its default)."""
    return field(default=default, metadata={"part": part, "later": later})


@dataclass(frozen=True)
class InterventionSpec:
    """Which dims, what is done to them, and where (docs/model-arguments.md). Defaults follow the paper.

    The fields are in label order: where it acts first, then each part's own keys.
    """

    ablate: Ablate = _key("none", "place")
    quant: Quant = _key("none", "place")
    kv_cache: KvCache = _key("none", "place", later=True)
    rope: Rope = _key("post", "place")
    stage: Stage = _key("prefill", "place")
    layers: str = _key("all", "place")
    preset: Preset = _key("none", "ablation", later=True)
    select: Select = _key("threshold", "ablation")
    lam: float = _key(5.0, "ablation")
    topk: int = _key(1, "ablation")
    norm_dtype: NormDtype = _key("float32", "ablation", later=True)
    band: Band = _key("none", "ablation", later=True)
    pairs: str = _key("none", "ablation", later=True)
    exclude: Exclude = _key("none", "ablation", later=True)
    fill: Fill = _key("mean", "ablation")
    control: Control = _key("random", "ablation")
    seed: int = _key(0, "ablation")
    targets: AblateTargets = _key("qk", "ablation")
    quant_targets: QuantTargets = _key("k", "quant")
    quant_axis: QuantAxis = _key("token", "quant")
    group: int = _key(0, "quant")
    sym: bool = _key(True, "quant")
    protect: Protect = _key("none", "quant")
    kv_residual: int = _key(KV_RESIDUAL, "kv", later=True)
    kv_group: int = _key(KV_GROUP, "kv", later=True)
    preset_for: str = field(default="none", metadata={"later": True})  # the architecture rule a preset resolved to
    given: tuple[str, ...] = field(default=(), compare=False, repr=False)  # keys the user set (they beat a preset)

    def __post_init__(self) -> None:
        for key, choices in CHOICES.items():
            if choices and getattr(self, key) not in choices:
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
        self._check_band()
        if self.fill == "shuffle" and self.stage == "all":
            raise QKAblateError(
                "fill=shuffle permutes the prompt's own tokens, so it has no value for generated tokens; "
                "use stage=prefill with it, or fill=mean"
            )
        check_kv_cache(self.kv_cache, self.kv_residual, self.kv_group)
        self._check_kv_edits()

    def _check_band(self) -> None:
        if self.select != "band":
            for key in ("band", "pairs", "exclude"):
                if getattr(self, key) != "none":
                    raise QKAblateError(
                        f"{key}={getattr(self, key)} only works with select=band; add select=band or drop {key}"
                    )
            return
        if (self.band == "none") == (self.pairs == "none"):
            raise QKAblateError("select=band needs exactly one of band=low|mid|high or pairs=A-B (rotary pair indices)")
        if self.pairs != "none":
            parse_pairs(self.pairs)
        if self.ablate == "nonmassive":
            raise QKAblateError("select=band chooses its own dims, so it has no control; use ablate=massive with it")
        if self.protect != "none":
            raise QKAblateError(
                "protect=massive keeps the dims select=threshold finds; it cannot be used with select=band"
            )

    def _check_kv_edits(self) -> None:
        """transformers' QuantizedCache stores its quantized copy of the prompt's K/V in `cache.update()`, before
        attention runs, so a post-RoPE edit of K or V (made there) would be lost at every decode step."""
        if self.kv_cache == "none" or self.rope != "post":
            return
        edited = (self.ablate_targets() & {"k"}) | (self.quant_target_set() & {"k", "v"})
        if edited:
            raise QKAblateError(
                f"kv_cache={self.kv_cache} quantizes the prompt's keys/values as they enter the cache, "
                f"before a post-RoPE edit of {'/'.join(sorted(edited)).upper()}, "
                "so decode steps would never see it; use rope=pre, or edit only q"
            )

    @property
    def is_noop(self) -> bool:
        """True when nothing is changed: the model must then behave bit-identically to the plain one."""
        return self.preset == "none" and is_noop(vars(self))

    @property
    def edits_attention(self) -> bool:
        """True when Q/K/V are edited inside attention (hooks needed); a real KV cache alone edits nothing there."""
        return self.preset != "none" or not edits_nothing(vars(self))

    def pair_indices(self) -> frozenset[int] | None:
        """The rotary pairs of `pairs=` (None when not given)."""
        return None if self.pairs == "none" else parse_pairs(self.pairs)

    def for_model(self, model: Any) -> InterventionSpec:
        """This spec with its preset resolved for a loaded model (its `config.model_type`)."""
        return self.for_architecture(
            str(getattr(getattr(model, "config", None), "model_type", "") or type(model).__name__)
        )

    def for_architecture(self, model_type: str) -> InterventionSpec:
        """The preset's values for `model_type`, under every key the user set themselves.

        A spec without a preset, or one already resolved, comes back as it is.
        """
        if self.preset == "none" or self.preset_for != "none":
            return self
        from qk_ablate.core.presets import preset_values

        rule, values = preset_values(self.preset, model_type)
        defaults = InterventionSpec()
        given = set(self.given) | {k for k in values if getattr(self, k) != getattr(defaults, k)}
        chosen = {k: v for k, v in values.items() if k not in given}
        return dataclasses.replace(self, **chosen, preset_for=rule)

    @property
    def needs_selection(self) -> bool:
        """True when massive dims must be found (to destroy them, avoid them, or protect them)."""
        return self.ablate != "none" or self.protect == "massive"

    def ablate_targets(self) -> frozenset[TensorName]:
        """Tensors whose dims are destroyed ('q', 'k')."""
        return _tensor_names(self.targets) if self.ablate != "none" else frozenset()

    def quant_target_set(self) -> frozenset[TensorName]:
        """Tensors that are fake-quantized ('q', 'k', 'v')."""
        return _tensor_names(self.quant_targets) if self.quant != "none" else frozenset()

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
        """Plain dict for the results JSON. Keys added after the first release are left out while
        at their default, so earlier results files and sweep cells still describe the same runs."""
        data = dataclasses.asdict(self)
        data.pop("given")
        return {k: v for k, v in data.items() if not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])}

    def to_wire(self) -> dict[str, Any]:
        """The whole spec as plain data for an engine's workers (every field, the preset's resolution and
        the keys the user gave included), tagged with the wire version; `from_wire` reads it back."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"version": WIRE_VERSION, **data, "given": list(self.given)}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> InterventionSpec:
        """The spec `to_wire` sent (validated again on arrival)."""
        fields = dict(data)
        if fields.pop("version", None) != WIRE_VERSION:
            raise QKAblateError("the intervention spec reached a worker in another wire version; reinstall qk-ablate")
        return cls(**{**fields, "given": tuple(fields.get("given", ()))})

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> InterventionSpec:
        """Build from already-split model_args values (strings, or lm-eval's literal-evaluated values)."""
        unknown = sorted(set(args) - set(CHOICES))
        if unknown:
            raise QKAblateError(f"unknown intervention key {unknown[0]!r}; valid keys: {', '.join(CHOICES)}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {key: _coerce(key, value, fields[key].default) for key, value in args.items()}
        return cls(**values, given=tuple(sorted(values)))


def _tensor_names(targets: str) -> frozenset[TensorName]:
    """'qk' -> {'q', 'k'}: the tensors a targets value names."""
    return frozenset(name for name in TENSOR_NAMES if name in targets)


def split_model_args(
    model_args: Mapping[str, Any], engine_keys: Iterable[str] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate our keys from the engine's, so it never passes ours on to `from_pretrained`.

    lm-eval splits model_args strings on every comma, so `layers=0,3,5` arrives as `layers=0`
    plus bare keys `3` and `5`; that case gets a message saying how to write it instead. A key that
    is neither ours nor one of `engine_keys` but close to one of ours (`ablat`) is a typo, refused
    before any weight loads (the engine would pass it on to the model's loader, which fails late).
    """
    ours = {k: v for k, v in model_args.items() if k in CHOICES}
    rest = {k: v for k, v in model_args.items() if k not in CHOICES}
    stray = [k for k in rest if re.fullmatch(r"\s*\d+(-\d+)?\s*", str(k))]
    if stray:
        raise QKAblateError(
            f"model_args has a bare '{stray[0]}': lm-eval splits model_args on commas, "
            "so list layers with ';' instead, e.g. layers=0;3;5 or layers=0-7"
        )
    known = set(engine_keys)
    for key in rest:
        near = get_close_matches(str(key), [*CHOICES, *known], n=1, cutoff=0.75) if key not in known else []
        if near and near[0] in CHOICES:
            raise QKAblateError(
                f"model argument '{key}' is not a key of qk-ablate or of the engine; did you mean '{near[0]}'? "
                "(docs/model-arguments.md lists them)"
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


def parse_pairs(text: str) -> frozenset[int]:
    """'22-25' / '22;24' -> rotary pair indices (the syntax of `layers`)."""
    chosen = _parse_layers(str(text).replace(",", ";"), "pairs")
    if chosen is None:
        raise QKAblateError("pairs=all is not a band; give rotary pair indices, e.g. pairs=22-25")
    return chosen


def _parse_layers(text: str, key: str = "layers") -> frozenset[int] | None:
    """'all' -> None; '0-7' / '0;3;5' / '0-3;8' -> the set of indices."""
    if text == "all":
        return None
    chosen: set[int] = set()
    for part in filter(None, _LAYER_SEPARATORS.split(text)):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise QKAblateError(
                f"{key}={text!r} is not valid; use {'all, ' if key == 'layers' else ''}a range 0-7, or a list 0;3;5"
            )
        start = int(match.group(1))
        stop = int(match.group(2)) if match.group(2) else start
        if stop < start:
            raise QKAblateError(f"{key}={text!r}: range {part} runs backwards; write it as {stop}-{start}")
        chosen.update(range(start, stop + 1))
    if not chosen:
        raise QKAblateError(f"{key}= is empty; use {'all, ' if key == 'layers' else ''}a range 0-7, or a list 0;3;5")
    return frozenset(chosen)


def _choices() -> dict[str, tuple[str, ...]]:
    """Key -> its allowed values, read from the fields' `Literal` types (empty: free-form, coerced)."""
    hints = get_type_hints(InterventionSpec)
    return {
        f.name: values(hints[f.name]) if get_origin(hints[f.name]) is not None and get_args(hints[f.name]) else ()
        for f in dataclasses.fields(InterventionSpec)
        if "part" in f.metadata
    }


CHOICES: dict[str, tuple[str, ...]] = _choices()  # every model_args key of ours, in label order
LABEL_KEYS: dict[str, tuple[str, ...]] = {
    part: tuple(f.name for f in dataclasses.fields(InterventionSpec) if f.metadata.get("part") == part)
    for part in ("place", "ablation", "quant", "kv")
}
_LATER_DEFAULTS = {f.name: f.default for f in dataclasses.fields(InterventionSpec) if f.metadata.get("later")}
