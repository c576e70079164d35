"""Loading a model for our own commands (profile, sweep, benchmarks): one place for the embedded
alias, the device choice and the one-line error when a model cannot be loaded.

The lm-eval model `qk_ablated` loads through HFLM (so every HFLM argument keeps working) and
shares `auto_device` and `load_error` with this module.
"""

from __future__ import annotations

from typing import Any

from qk_ablate.embedded import load_tokenizer, resolve_pretrained
from qk_ablate.errors import QKAblateError

DTYPES = ("auto", "bfloat16", "float16", "float32")


def auto_device(device: str | None = "auto") -> str:
    """`auto` (or nothing): the first GPU when there is one, else the CPU; anything else as given."""
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def load_error(name: str, error: BaseException) -> QKAblateError:
    """One line for a model that did not load: its first line of text and how to fix it."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return QKAblateError(
        f"could not load model {name!r} ({first}); give a local folder, a Hub id already in the cache, "
        "or pretrained=smollm2-135m"
    )


def load_model(
    pretrained: str,
    device: str | None = "auto",
    dtype: str = "auto",
    attn_implementation: str | None = None,
    gguf_file: str | None = None,
) -> tuple[Any, Any]:
    """`(model, tokenizer)` in eval mode on `device`; `pretrained` may be the embedded alias."""
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise QKAblateError(f"dtype={dtype!r} is not valid; choose one of: {', '.join(DTYPES)}")
    path, gguf = resolve_pretrained(pretrained, gguf_file)
    options: dict[str, Any] = {"dtype": dtype}
    if gguf:
        options["gguf_file"] = gguf
    if attn_implementation:
        options["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **options).to(auto_device(device)).eval()
    except (OSError, ValueError, ImportError) as error:  # missing files, unknown attn_implementation, no flash-attn
        raise load_error(pretrained, error) from None
    return model, load_tokenizer(pretrained, gguf_file)


LOAD_KEYS = ("pretrained", "device", "dtype", "attn_implementation", "gguf_file")


def parse_model_args(text: str) -> tuple[dict[str, str], Any]:
    """`pretrained=X,dtype=float32,ablate=massive` (lm-eval's model_args syntax) -> (load options, spec).

    The load options are `load_model`'s keywords; the rest must be intervention keys, validated
    into an `InterventionSpec` (its preset still unresolved: that needs the loaded model).
    """
    from qk_ablate.spec import InterventionSpec, split_model_args

    pairs: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        key, sep, value = part.partition("=")
        pairs[key.strip()] = value.strip() if sep else part
    ours, rest = split_model_args(pairs)
    unknown = sorted(set(rest) - set(LOAD_KEYS))
    if unknown:
        raise QKAblateError(
            f"model_args key {unknown[0]!r} is not known here; use {', '.join(LOAD_KEYS)} or an intervention key"
        )
    return rest, InterventionSpec.from_args(ours)


def load_from_model_args(text: str, device: str | None = None) -> tuple[Any, Any, Any, str]:
    """(model, tokenizer, spec resolved for this model, model name) from a model_args string."""
    options, spec = parse_model_args(text)
    name = options.pop("pretrained", "smollm2-135m")
    if device is not None and "device" not in options:
        options["device"] = device
    model, tokenizer = load_model(name, **options)
    return model, tokenizer, spec.for_model(model), name
