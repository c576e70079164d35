"""A model's context window read from its config alone, so that lm-eval's CLI can refuse a task
longer than the window before any weight loads (the engine's own check comes after the load)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qk_ablate.models.embedded import resolve_pretrained

# HFLM reads the window from the first of these that the config has (lm-eval's `_DEFAULT_MAX_LENGTH` else)
_WINDOW_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")


def configured_window(model_args: Mapping[str, Any]) -> int | None:
    """The window our engines will run with: `max_length` / `max_model_len` when given, else the
    config's; None when it cannot be read without loading (a Hub id not cached offline, say)."""
    for key in ("max_length", "max_model_len"):
        value = model_args.get(key)
        if value not in (None, ""):
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    pretrained = str(model_args.get("pretrained") or "smollm2-135m")
    try:
        from transformers import AutoConfig

        path, gguf = resolve_pretrained(pretrained, model_args.get("gguf_file"))
        config = AutoConfig.from_pretrained(path, gguf_file=gguf) if gguf else AutoConfig.from_pretrained(path)
    except Exception:  # the engine loads it later and says what is wrong
        return None
    config = getattr(config, "text_config", None) or config
    for key in _WINDOW_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
