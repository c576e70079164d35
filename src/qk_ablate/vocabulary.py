"""The intervention vocabulary: every `qk_ablated` key, the values it takes, and their checks.

`spec.py` validates model_args against it, `quantize.py` checks its arguments with it and
`runs.py` names runs from it, so a new quantization format, axis or target is added here once
(and any second engine reads the same words).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qk_ablate.errors import QKAblateError

QUANT_FORMATS: tuple[str, ...] = ("int8", "int4", "int3", "int2", "fp8")
BITS: dict[str, int] = {"int8": 8, "int4": 4, "int3": 3, "int2": 2}
QUANT_AXES: tuple[str, ...] = ("token", "channel", "tensor")
QUANT_TARGETS: tuple[str, ...] = ("k", "q", "qk", "v", "kv", "qkv")
ABLATE_TARGETS: tuple[str, ...] = ("qk", "q", "k")
# transformers' QuantizedCache (`kv_cache.py`): backend:format, the bit widths each backend's layer accepts
KV_CACHES: tuple[str, ...] = ("none", "quanto:int4", "quanto:int2", *(f"hqq:int{n}" for n in (1, 2, 3, 4, 8)), "fp8")
KV_RESIDUAL, KV_GROUP = 128, 64  # transformers' residual_length and q_group_size defaults

# key -> allowed values, the default first (None: free-form, coerced and checked by spec.py)
CHOICES: dict[str, tuple[str, ...] | None] = {
    "ablate": ("none", "massive", "nonmassive"),
    "preset": ("none", "jin2025"),
    "select": ("threshold", "topk", "band"),
    "lam": None,
    "topk": None,
    "band": ("none", "low", "mid", "high"),
    "pairs": None,
    "exclude": ("none", "massive"),
    "fill": ("mean", "shared_mean", "tensor_mean", "zero"),
    "control": ("random", "smallest"),
    "seed": None,
    "rope": ("post", "pre"),
    "stage": ("prefill", "all"),
    "targets": ABLATE_TARGETS,
    "layers": None,
    "quant": ("none", *QUANT_FORMATS),
    "quant_targets": QUANT_TARGETS,
    "quant_axis": QUANT_AXES,
    "group": None,
    "sym": None,
    "protect": ("none", "massive"),
    "kv_cache": KV_CACHES,
    "kv_residual": None,
    "kv_group": None,
}

# Which keys name a run: where it acts always; the rest only when their part is switched on.
PLACE_KEYS: tuple[str, ...] = ("ablate", "quant", "kv_cache", "rope", "stage", "layers")
ABLATION_KEYS: tuple[str, ...] = ("preset", "select", "lam", "topk", "band", "pairs", "exclude", "fill", "control", "seed",
                                  "targets")
QUANT_KEYS: tuple[str, ...] = ("quant_targets", "quant_axis", "group", "sym", "protect")
KV_KEYS: tuple[str, ...] = ("kv_residual", "kv_group")


def is_noop(intervention: Mapping[str, Any]) -> bool:
    """True when an intervention (a spec's dict, as recorded in a results file) changes nothing."""
    return edits_nothing(intervention) and intervention.get("kv_cache", "none") == "none"


def edits_nothing(intervention: Mapping[str, Any]) -> bool:
    """True when nothing inside attention is edited (a real quantized KV cache may still be on)."""
    return intervention.get("ablate", "none") == "none" and intervention.get("quant", "none") == "none"


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
        raise QKAblateError(f"kv_residual={residual} must be 0 or more (recent tokens kept unquantized; default {KV_RESIDUAL})")
    if group < 1:
        raise QKAblateError(f"kv_group={group} must be a positive group size (default {KV_GROUP})")
    if (residual, group) != (KV_RESIDUAL, KV_GROUP):
        if kv_cache == "none":
            raise QKAblateError("kv_residual/kv_group only work with a quantized cache; add kv_cache=quanto:int4 or drop them")
        if kv_cache == "fp8":
            raise QKAblateError("kv_cache=fp8 is per tensor, with no residual window or groups; drop kv_residual and kv_group")
