"""The intervention vocabulary: the type of every `qk_ablated` key, and the checks of its values.

Each closed key is a `Literal` type; its allowed values are read from that type (`values`), so a
new quantization format, axis or target is added here once, and the spec, the run labels, the
CLI and both engines pick it up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

from qk_ablate.errors import QKAblateError

NONE: Literal["none"] = "none"  # the value that switches a part off

Ablate = Literal["none", "massive", "nonmassive"]
Preset = Literal["none", "jin2025"]
Select = Literal["threshold", "topk", "band"]
NormDtype = Literal["float32", "native"]  # the column norm in float32, or rounded to the tensor's own dtype
Band = Literal["none", "low", "mid", "high"]
Exclude = Literal["none", "massive"]
Fill = Literal["mean", "shared_mean", "tensor_mean", "zero", "shuffle"]
Control = Literal["random", "smallest"]
Rope = Literal["post", "pre"]
Stage = Literal["prefill", "all"]
AblateTargets = Literal["qk", "q", "k"]
QuantFormat = Literal["int8", "int4", "int3", "int2", "fp8"]
Quant = Literal["none", "int8", "int4", "int3", "int2", "fp8"]
QuantTargets = Literal["k", "q", "qk", "v", "kv", "qkv"]
QuantAxis = Literal["token", "channel", "tensor"]
Protect = Literal["none", "massive"]
# transformers' QuantizedCache (`engines.hf.kv_cache`): backend:format, the widths each backend's layer accepts
KvCache = Literal[
    "none", "quanto:int4", "quanto:int2", "hqq:int1", "hqq:int2", "hqq:int3", "hqq:int4", "hqq:int8", "fp8"
]

TensorName = Literal["q", "k", "v"]  # which tensor of attention
TENSOR_NAMES: tuple[TensorName, ...] = ("q", "k", "v")
Where = Literal["pre", "post"]  # before or after the rotary embedding (a `rope=` value, as a site's place)


def values(kind: Any) -> tuple[str, ...]:
    """The allowed values of a `Literal` type, in its order (the first is the default)."""
    return tuple(get_args(kind))


QUANT_FORMATS: tuple[str, ...] = values(QuantFormat)
QUANT_AXES: tuple[str, ...] = values(QuantAxis)
BITS: dict[str, int] = {fmt: int(fmt[3:]) for fmt in QUANT_FORMATS if fmt.startswith("int")}
KV_RESIDUAL, KV_GROUP = 128, 64  # transformers' residual_length and q_group_size defaults


def is_noop(intervention: Mapping[str, Any]) -> bool:
    """True when an intervention (a spec's dict, as recorded in a results file) changes nothing."""
    return edits_nothing(intervention) and intervention.get("kv_cache", NONE) == NONE


def edits_nothing(intervention: Mapping[str, Any]) -> bool:
    """True when nothing inside attention is edited (a real quantized KV cache may still be on)."""
    return intervention.get("ablate", NONE) == NONE and intervention.get("quant", NONE) == NONE


def check_quantizer(fmt: str, axis: str, group: int, sym: bool) -> None:
    """One readable error for a quantizer setting that cannot work (`group` 0 = the whole axis)."""
    if fmt not in QUANT_FORMATS:
        raise QKAblateError(f"quant={fmt!r} is not a quantization format; choose one of: {', '.join(QUANT_FORMATS)}")
    if axis not in QUANT_AXES:
        raise QKAblateError(f"quant_axis={axis!r} is not valid; choose one of: {', '.join(QUANT_AXES)}")
    if fmt == "fp8" and not sym:
        raise QKAblateError("quant=fp8 is symmetric only; drop sym=false or use an int format")
    if group < 0:
        raise QKAblateError(f"group={group} must be 0 (whole axis) or a positive group size")
    if group and axis == "tensor":
        raise QKAblateError("group= cannot be used with quant_axis=tensor; drop group or use quant_axis=token|channel")


def check_kv_cache(kv_cache: str, residual: int, group: int) -> None:
    """One readable error for a KV-cache setting transformers' QuantizedCache would refuse or ignore."""
    if residual < 0:
        raise QKAblateError(
            f"kv_residual={residual} must be 0 or more (recent tokens kept unquantized; default {KV_RESIDUAL})"
        )
    if group < 1:
        raise QKAblateError(f"kv_group={group} must be a positive group size (default {KV_GROUP})")
    if (residual, group) != (KV_RESIDUAL, KV_GROUP):
        if kv_cache == NONE:
            raise QKAblateError(
                "kv_residual/kv_group only work with a quantized cache; add kv_cache=quanto:int4 or drop them"
            )
        if kv_cache == "fp8":
            raise QKAblateError(
                "kv_cache=fp8 is per tensor, with no residual window or groups; drop kv_residual and kv_group"
            )
