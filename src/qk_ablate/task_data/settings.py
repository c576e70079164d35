"""Run-time settings of our tasks: the evaluated model's tokenizer, `num_docs`, `task_seed`, the frame.

Every task's `custom_dataset` hook (in the task's own module) reads them from here.

How run-time settings reach a builder (lm-eval 0.4.13): the CLI (`EvaluatorConfig`) and
`simple_evaluate` (only when it is not handed a `task_manager`) build
`TaskManager(metadata=parsed model_args | --metadata)`; `TaskFactory._load_full_config` merges
that into each task's YAML `metadata` (run-time keys win), and `ConfigurableTask.download` calls
`custom_dataset(**metadata, **dataset_kwargs)`. Code that makes its own TaskManager must pass
`metadata={"pretrained": ..., "gguf_file": ...}` itself. So a builder sees the evaluated model's
`pretrained` / `gguf_file` / `tokenizer`, our own keys `num_docs` and `task_seed`, the YAML's
`version`, `apply_chat_template` / `system_instruction` (put there by qk_ablate.plugin when the
CLI has them, so exact-length prompts are sized inside the chat template), and every other
model argument, which it ignores. Per-task constants (the passkey
length) come through the YAML's `dataset_kwargs` under names no model argument uses, because a
key present in both would make that call fail.

The seed key is `task_seed`, not `seed`: `seed` is a `qk_ablated` model argument (the control
draw), and as model arguments reach the tasks too, a sweep over control seeds would otherwise
evaluate each seed on different documents.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qk_ablate.errors import QKAblateError
from qk_ablate.task_data.lengths import parse_length
from qk_ablate.task_data.tokens import prompt_frame

TOKENIZER_KEYS = ("tokenizer", "pretrained", "model")


def _int_setting(metadata: dict[str, Any], key: str, default: int) -> int:
    value = metadata.get(key, default)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise QKAblateError(f"metadata '{key}' must be a whole number, got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise QKAblateError(f"metadata '{key}' must be a whole number, got {value!r}")
    return number


def task_seed(metadata: dict[str, Any]) -> int:
    return _int_setting(metadata, "task_seed", 0)


def num_docs(metadata: dict[str, Any], default: int) -> int:
    value = _int_setting(metadata, "num_docs", default)
    if value < 1:
        raise QKAblateError(f"metadata 'num_docs' must be at least 1, got {value}")
    return value


_EVALUATED: list[Any] = []  # the tokenizer of the qk_ablated model this process built last


def evaluating(tokenizer: Any) -> None:
    """Our lm-eval models call this once loaded: lm-eval builds tasks after the model, and
    `--model qk_ablated` with no `--model_args` (the embedded model) gives the tasks no name to load
    a tokenizer by, so they size their prompts in this one."""
    _EVALUATED[:] = [tokenizer]


def resolve_tokenizer(metadata: dict[str, Any]) -> Any:
    """The evaluated model's tokenizer, found the way lm-eval's HFLM finds it.

    An explicit `tokenizer` wins (a name, a path, or a tokenizer object); otherwise `pretrained`
    with its `gguf_file` (the embedded alias `smollm2-135m` works); `model` (API backends); last,
    the tokenizer of the qk_ablated model loaded in this process (`evaluating`).
    """
    for key in TOKENIZER_KEYS:
        value = metadata.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            if callable(value) and hasattr(value, "encode"):
                return value  # a tokenizer object
            value = getattr(value, "name_or_path", None)  # a model object
            if not value:
                continue
        gguf = metadata.get("gguf_file") if key == "pretrained" else None
        from qk_ablate.models.embedded import load_tokenizer

        try:
            return load_tokenizer(value, gguf)
        except QKAblateError:
            raise
        except Exception as exc:
            raise QKAblateError(
                f"could not load the tokenizer of '{value}' to size the prompts ({type(exc).__name__}: {exc}); "
                'pass one that loads offline with --metadata \'{"tokenizer": "<name or path>"}\''
            ) from exc
    if _EVALUATED:
        return _EVALUATED[0]
    raise QKAblateError(
        "this task sizes its prompts in the evaluated model's tokens but no tokenizer was given; "
        'pass --model_args pretrained=<model> or --metadata \'{"tokenizer": "<name or path>"}\''
    )


def as_dataset(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """What a `custom_dataset` returns to lm-eval: the documents as its test split."""
    import datasets

    return {"test": datasets.Dataset.from_list(docs)}


def length_dataset(
    build: Callable[..., list[dict[str, Any]]],
    length: int | str,
    gen_budget: int | str,
    default_num_docs: int,
    metadata: dict[str, Any],
    **options: Any,
) -> dict[str, Any]:
    """The custom_dataset of an exact-length task: the evaluated model's tokenizer, the run's
    `num_docs` / `task_seed`, and its chat-template frame, handed to the task's builder."""
    tokenizer = resolve_tokenizer(metadata)
    docs = build(
        tokenizer,
        parse_length(length),
        num_docs=num_docs(metadata, default_num_docs),
        seed=task_seed(metadata),
        gen_budget=int(gen_budget),
        frame=prompt_frame(tokenizer, metadata),
        **options,
    )
    return as_dataset(docs)
