"""Loading a model for our own commands (profile, sweep, benchmarks): one place for the embedded
alias, the device choice and the one-line error when a model cannot be loaded.

The lm-eval model `qk_ablated` loads through HFLM (so every HFLM argument keeps working) and
shares `auto_device` and `load_error` with this module.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from qk_ablate.errors import QKAblateError
from qk_ablate.models.embedded import load_tokenizer, resolve_pretrained

DTYPES = ("auto", "bfloat16", "float16", "float32")


def auto_device(device: str | None = "auto") -> str:
    """`auto` (or nothing): the first GPU when there is one, else the CPU; anything else as given."""
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def load_error(name: str, error: BaseException, path: str | None = None, gguf_file: str | None = None) -> QKAblateError:
    """One line for a model that did not load: what is wrong with its folder (when we can tell) and how to fix it.

    transformers' own message for a missing folder, a truncated file or a missing quantization
    package is a traceback that names none of these; CI logs need the cause in one line.
    """
    text = str(error).strip()
    first = text.splitlines()[0].rstrip(".") if text else type(error).__name__
    where = path or name
    problem = None if gguf_file else checkpoint_problem(where)
    if problem is None and isinstance(error, ImportError):
        method = quantization_method(where)
        if method:
            problem = f"it is a {method} checkpoint and the package that loads it is missing or too old ({first}); " + (
                "pip install 'qk-ablate[quantized]' (compressed-tensors)"
                if method == "compressed-tensors"
                else f"install the package transformers names for {method}"
            )
    if problem is None and isinstance(error, OSError) and not Path(where).expanduser().exists():
        problem = (
            f"{first}; there is no local folder of that name either (relative paths start from {Path.cwd()}); "
            "check the path or the Hub id"
        )
    if problem is None:
        problem = f"{first}; give a local folder, a Hub id already in the cache, or pretrained=smollm2-135m"
    return QKAblateError(f"could not load model {name!r}: {problem}")


def is_load_failure(error: BaseException, path: str | None, gguf_file: str | None = None) -> bool:
    """Whether `error` means the checkpoint could not be loaded (a bug elsewhere keeps its traceback).

    transformers raises OSError for missing files and ImportError for missing packages; a broken
    weights file raises the safetensors reader's own error, so the folder itself is checked too.
    """
    return isinstance(error, (OSError, ImportError)) or bool(
        path and not gguf_file and checkpoint_problem(path) is not None
    )


def _looks_like_path(name: str) -> bool:
    """A Hub id is `name` or `org/name`; anything else is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def checkpoint_problem(path: str) -> str | None:
    """What is wrong with a local checkpoint folder (missing, no config, no or broken weights), or None.

    Only the files are read (safetensors headers, not tensors), so this costs nothing next to a load.
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        if _looks_like_path(path):
            start = "" if folder.is_absolute() else f" (relative paths start from {Path.cwd()})"
            return f"there is no folder '{path}'{start}; check the path"
        return None  # maybe a Hub id
    if not folder.is_dir():
        return f"'{path}' is a file; give the folder that holds config.json and the weights (a GGUF file: gguf_file=)"
    if not (folder / "config.json").is_file():
        return f"'{path}' has no config.json; give the folder that save_pretrained wrote"
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            return f"'{index}' is not a valid index ({type(exc).__name__}); copy it again"
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            return f"'{path}' lacks {len(missing)} of its {len(shards)} weight shards ({missing[0]}, ...); copy them in"
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin"))
    if not weights:
        return (
            f"'{path}' has a config.json but no weights (model.safetensors or pytorch_model.bin); "
            "copy them in, or give the folder that save_pretrained wrote"
        )
    for file in weights:
        with open(file, "rb") as handle:
            head = handle.read(len(LFS_POINTER))
        if head == LFS_POINTER:
            return (
                f"'{file}' is a Git LFS pointer, not the weights; fetch them with `git lfs pull` "
                "(GitHub Actions: actions/checkout with `lfs: true`)"
            )
        if file.suffix == ".safetensors":
            broken = _safetensors_problem(file)
            if broken:
                return f"'{file}' {broken}; copy or download it again"
    return None


def safetensors_header(file: Path) -> tuple[int, dict[str, Any]]:
    """(header length, header) of a safetensors file, read without its tensors.

    Raises ValueError with the reason when the file is too short for a header, or the header is not JSON.
    """
    size = file.stat().st_size
    with open(file, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"is not a safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", prefix)
        if length > size - 8:
            raise ValueError(
                f"is truncated or not a safetensors file (its header claims {length} bytes, the file has {size})"
            )
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise ValueError("is not a safetensors file (its header is not valid JSON)") from None
    if not isinstance(header, dict):
        raise ValueError("is not a safetensors file (its header is not valid JSON)")
    return length, header


def _safetensors_problem(file: Path) -> str | None:
    """Why a safetensors file cannot be read (truncated, not safetensors), from its header alone."""
    try:
        length, header = safetensors_header(file)
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except ValueError as problem:
        return str(problem)
    except (KeyError, TypeError, IndexError, AttributeError):
        return "is not a safetensors file (its header is not valid JSON)"
    size = file.stat().st_size
    if 8 + length + end > size:
        return f"is truncated: its tensors need {8 + length + end} bytes, the file has {size}"
    return None


def quantization_method(path: str) -> str | None:
    """The `quant_method` a folder's config.json names (compressed-tensors, gptq, awq, ...), if any."""
    config = Path(path).expanduser() / "config.json"
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    quant = settings.get("quantization_config") if isinstance(settings, dict) else None
    return str(quant["quant_method"]) if isinstance(quant, dict) and quant.get("quant_method") else None


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
        model = AutoModelForCausalLM.from_pretrained(path, **options)
        # transformers types its `to` (functools.wraps of torch's) as a plain function: mypy sees `self` unbound
        model = model.to(auto_device(device)).eval()  # type: ignore[arg-type]
    except Exception as error:  # missing or broken files, unknown attn_implementation, no flash-attn
        if not isinstance(error, ValueError) and not is_load_failure(error, path, gguf):
            raise
        raise load_error(pretrained, error, path, gguf) from None
    return model, load_tokenizer(pretrained, gguf_file)


LOAD_KEYS = ("pretrained", "device", "dtype", "attn_implementation", "gguf_file")


def parse_model_args(text: str) -> tuple[dict[str, str], Any]:
    """`pretrained=X,dtype=float32,ablate=massive` (lm-eval's model_args syntax) -> (load options, spec).

    The load options are `load_model`'s keywords; the rest must be intervention keys, validated
    into an `InterventionSpec` (its preset still unresolved: that needs the loaded model).
    """
    from qk_ablate.core.spec import InterventionSpec, split_model_args

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
