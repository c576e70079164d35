"""The real quantized KV cache (`kv_cache=quanto:int4`, `hqq:int2`, `fp8`): transformers' `QuantizedCache`.

Where `quant=` simulates quantization inside attention, this runs transformers' own quantized cache,
so the real quantizer's error reaches the same tasks. It only acts in generation: `generate()` is
asked for `cache_implementation="quantized"` with a `cache_config` (transformers 5.24's names,
`GenerationMixin._prepare_cache_for_generation`). The first `update()` of each layer stores a
quantized copy of the prompt's K/V and returns them unquantized, so the prefill (and with it the
first generated token) is the plain model's; decode steps attend to the dequantized prompt plus up
to `kv_residual` recent tokens in full precision, after which everything is quantized again.
quanto and hqq group `kv_group` consecutive values of the [batch, heads, seq, head_dim] tensor
(quanto's axis 0: a group of 64 is one token's 64 head dims, min/max asymmetric); fp8 uses one
scale per layer tensor, fixed by the prompt.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

from qk_ablate.core.spec import InterventionSpec
from qk_ablate.errors import QKAblateError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# backend -> (module that must import, the pip package that provides it)
PACKAGES: dict[str, tuple[str, str]] = {"quanto": ("optimum.quanto", "optimum-quanto"), "hqq": ("hqq", "hqq")}

__all__ = ["PACKAGES", "backend_available", "cache_config", "check_model", "generate_kwargs"]


def backend_available(module: str) -> bool:
    """Whether the backend's module can be imported (a function, so tests can take it away)."""
    try:
        return find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package (optimum)
        return False


def cache_config(spec: InterventionSpec) -> dict[str, Any]:
    """transformers' `cache_config` for the spec's cache ({} when there is none)."""
    if spec.kv_cache == "none":
        return {}
    if spec.kv_cache == "fp8":
        return {"backend": "fp8"}  # per tensor: QuantizedCache refuses the group-wise options here
    backend, fmt = spec.kv_cache.split(":")
    return {
        "backend": backend,
        "nbits": int(fmt.removeprefix("int")),
        "q_group_size": spec.kv_group,
        "residual_length": spec.kv_residual,
    }


def generate_kwargs(spec: InterventionSpec) -> dict[str, Any]:
    """What `model.generate()` needs to run the spec's quantized cache ({} when there is none)."""
    config = cache_config(spec)
    return {"cache_implementation": "quantized", "cache_config": config} if config else {}


def check_model(model: PreTrainedModel, spec: InterventionSpec) -> None:
    """Refuse, in one line and before any request runs, a cache that would fail (or be ignored) in generation."""
    config = cache_config(spec)
    if not config:
        return
    backend = config["backend"]
    module, package = PACKAGES.get(backend, (None, None))
    if module is not None and not backend_available(module):
        raise QKAblateError(f"kv_cache={spec.kv_cache} needs the {package} package: pip install {package}")
    text = model.config.get_text_config(decoder=True)
    if module is not None:
        heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        if (heads * head_dim) % spec.kv_group:
            raise QKAblateError(
                f"kv_group={spec.kv_group} does not divide the {heads} KV heads x {head_dim} dims of a token, so {backend} "
                f"would fail on some prompt lengths; use kv_group={head_dim} (or a divisor of it)"
            )
    supports = getattr(model, "_supports_default_dynamic_cache", None)  # False: generate() would ignore the cache
    if supports is not None and not supports():
        raise QKAblateError(
            f"kv_cache={spec.kv_cache}: {type(model).__name__} keeps no transformers KV cache to quantize"
        )
    from transformers.cache_utils import QuantizedCache

    try:  # transformers' own checks: the backend's version and bit width, full-attention layers only
        QuantizedCache(config=text, **config)
    except (ImportError, ValueError) as error:
        first = str(error).strip().splitlines()[0]
        raise QKAblateError(f"kv_cache={spec.kv_cache} cannot run on this model: {first}") from None
