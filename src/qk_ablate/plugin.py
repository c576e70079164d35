"""lm-eval integration: the `qk_ablated` model, our tasks on the default search path, one-line errors.

Imported by the start-up hook when the `lm_eval` CLI runs; importing it by hand does the same.
lm-eval 0.4.13 has no plugin hooks for these, so five of its behaviours are wrapped or filtered (each
is idempotent and marked `__qk_ablate__`); the line above each says what it replaces and which
test fails if an lm-eval release changes it.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lm_eval.models  # noqa: F401  (lm-eval's own models are registered before ours)
from lm_eval.tasks import TaskManager, _yaml_loader

from qk_ablate.engines import ENGINES
from qk_ablate.errors import QKAblateError
from qk_ablate.paths import TEMPLATE_PREFIX, tasks_dir, template_path
from qk_ablate.startup import ModelUnavailable, named_models
from qk_ablate.task_data.catalogue import tasks as catalogue_tasks

_MARK = "__qk_ablate__"  # set on each wrapper, so that importing this module again wraps nothing twice
_F = TypeVar("_F", bound=Callable[..., Any])


def _marked(function: _F) -> _F:
    setattr(function, _MARK, True)
    return function


def _with_our_tasks(init):
    @functools.wraps(init)
    def wrapper(self, *args, include_path=None, **kwargs):
        paths = (
            []
            if include_path is None
            else list(include_path)
            if isinstance(include_path, (list, tuple))
            else [include_path]
        )
        ours = tasks_dir()
        if ours not in map(str, paths):
            paths.insert(0, ours)  # user paths come later and may override ours
        return init(self, *args, include_path=paths, **kwargs)

    return _marked(wrapper)


# Replaces: TaskManager searching only lm-eval's own tasks plus include_path.
# Pinned by: tests/test_lm.py::test_plugin_puts_our_tasks_on_the_default_search_path.
if not getattr(TaskManager.__init__, _MARK, False):
    TaskManager.__init__ = _with_our_tasks(TaskManager.__init__)


def _with_prompt_frame(process_tasks):
    """Hand `--apply_chat_template` / `--system_instruction` to the tasks, which size prompts inside them;
    a task name lm-eval does not know is one line with the nearest names (before the model loads)."""

    @functools.wraps(process_tasks)
    def wrapper(self, metadata=None):
        extra = {}
        if getattr(self, "apply_chat_template", False):
            extra["apply_chat_template"] = self.apply_chat_template
        if getattr(self, "system_instruction", None):
            extra["system_instruction"] = self.system_instruction
        if extra:
            metadata = {**extra, **(metadata or self.metadata or {})}
        try:
            manager = process_tasks(self, metadata)
        except ValueError as error:
            missing = str(error).partition("Tasks not found: ")[2]
            if not missing:
                raise
            raise QKAblateError(unknown_tasks(missing.split(", "))) from None
        names = list(getattr(self, "tasks", None) or [])
        if getattr(self, "model", None) in {engine.model for engine in ENGINES.values()}:
            check_windows(names, getattr(self, "model_args", None) or {})
        check_csv_tasks(manager, names)
        return manager

    return _marked(wrapper)


def check_csv_tasks(manager: Any, names: list[str]) -> None:
    """Read the CSV of each named task built on our facts/statements templates now, so an empty,
    headerless or malformed file is one line before the model loads, not after."""
    from qk_ablate.task_data.user_facts import facts_dataset
    from qk_ablate.task_data.user_statements import statements_dataset

    builders: dict[str, Callable[..., Any]] = {
        "qk_ablate:facts_csv": facts_dataset,
        "qk_ablate:statements_csv": statements_dataset,
    }
    index = getattr(manager, "task_index", None) or {}
    for name in names:
        entry = index.get(name)
        path = entry.get("yaml_path") if isinstance(entry, dict) else getattr(entry, "yaml_path", None)
        if not isinstance(path, (str, Path)) or not str(path).endswith((".yaml", ".yml")):
            continue
        try:
            raw = _yaml_loader.load_yaml(path, resolve_func=False, recursive=False)
        except Exception:  # lm-eval reports its own YAML problems when it builds the task
            continue
        include = raw.get("include") if isinstance(raw, dict) else None
        builder = builders.get(include) if isinstance(include, str) else None
        if builder is not None:
            builder(**(raw.get("dataset_kwargs") or {}))  # a QKAblateError here is the one line


def check_windows(names: list[str], model_args: Any) -> None:
    """Refuse, before the model loads, a length task longer than the window its config gives (the
    engine's check after the load stays for what a config does not tell: a Hub id not cached)."""
    from qk_ablate.models.window import configured_window
    from qk_ablate.task_data.catalogue import task_length
    from qk_ablate.task_data.lengths import LENGTHS, parse_length

    lengths = {name: task_length(name) for name in names}
    longest = max((n for n in lengths.values() if n), default=0)
    if longest <= 2048:  # every window we know of serves 2k; reading a GGUF's config costs seconds
        return
    if isinstance(model_args, str):
        from lm_eval.utils import simple_parse_args_string

        model_args = simple_parse_args_string(model_args)
    window = configured_window(model_args)
    if window is None:
        return
    for name, length in lengths.items():
        if length and length > window:
            family = name.rsplit("_", 1)[0]
            fits = [f"{family}_{n}" for n in LENGTHS if parse_length(n) <= window]
            raise QKAblateError(
                f"task {name} sizes its prompts to {length} tokens, more than the model's window of {window} "
                "(from its config; max_length overrides it); run a shorter length of the task"
                + (f" ({fits[-1]} fits)" if fits else "")
                + " or a model with a longer context"
            )


def unknown_tasks(names: list[str]) -> str:
    """One line for task names no task index holds: each with its nearest known names."""
    from difflib import get_close_matches

    known = TaskManager().all_tasks
    parts = []
    for name in names:
        near = get_close_matches(name, known, n=3, cutoff=0.6)
        parts.append(f"'{name}'" + (f" (did you mean {', '.join(near)}?)" if near else ""))
    return f"unknown task {'; '.join(parts)}; `lm_eval ls tasks` lists every task"


try:
    from lm_eval.config.evaluate_config import EvaluatorConfig
except ImportError:  # an lm-eval without the CLI config: Python callers pass the metadata themselves
    EvaluatorConfig = None
# Replaces: the CLI keeping --apply_chat_template / --system_instruction from the tasks' metadata.
# Pinned by: tests/test_lm.py::test_plugin_hands_the_chat_template_flags_to_the_tasks.
if EvaluatorConfig is not None and not getattr(EvaluatorConfig.process_tasks, _MARK, False):
    EvaluatorConfig.process_tasks = _with_prompt_frame(EvaluatorConfig.process_tasks)


def _with_our_templates(load_yaml):
    """Let a user's task YAML say `include: qk_ablate:<template>` (lm-eval resolves includes as paths)."""

    @functools.wraps(load_yaml)
    def wrapper(path, **kwargs):
        name = Path(path).name
        if name.startswith(TEMPLATE_PREFIX):
            try:
                path = template_path(name[len(TEMPLATE_PREFIX) :])
            except QKAblateError as exc:
                # lm-eval's task index skips YAMLs that fail to load without a word; say why here.
                print(f"qk-ablate: error: {exc}", file=sys.stderr)
                raise
        return load_yaml(path, **kwargs)

    return _marked(wrapper)


# Replaces: `include:` read as a file path only (lm-eval's private _yaml_loader.load_yaml, which
# loads includes through its module global, so patching the module is enough).
# Pinned by: tests/test_tasks_user.py::test_facts_csv_template and ::test_unknown_template_is_a_readable_error.
if not getattr(_yaml_loader.load_yaml, _MARK, False):
    _yaml_loader.load_yaml = _with_our_templates(_yaml_loader.load_yaml)


def offline_dataset_line(error: BaseException) -> str | None:
    """One line for a task whose dataset the Hub could not give (offline, say); None for other errors.
    lm-eval's gsm8k is pointed at qk_gsm8k, the same config on the test split that ships with us."""
    text = str(error)
    if not isinstance(error, ConnectionError) or "on the Hub" not in text or "Couldn't reach '" not in text:
        return None
    dataset = text.split("Couldn't reach '", 1)[1].split("'", 1)[0]
    line = f"a task's dataset '{dataset}' could not be loaded from the Hub ({text.rsplit('(', 1)[-1].rstrip(')')})"
    if dataset == "openai/gsm8k":
        return line + "; run qk_gsm8k instead: lm-eval's gsm8k prompt, filters and metric on the packaged test split"
    return line + "; run where the Hub is reachable once (datasets caches it), or give the task a local copy"


def _one_line_errors(hook):
    def excepthook(kind, value, traceback):
        if isinstance(value, QKAblateError):
            print(f"qk-ablate: error: {value}", file=sys.stderr)
            return
        line = offline_dataset_line(value)
        if line is not None:
            print(f"qk-ablate: error: {line}", file=sys.stderr)
            return
        hook(kind, value, traceback)

    return _marked(excepthook)


# Replaces: the traceback lm_eval prints for any exception, for our QKAblateError and a dataset the Hub
# could not give (lm-eval's gsm8k offline: pointed at qk_gsm8k).
# Pinned by: tests/test_embedded.py::test_bad_model_args_give_one_line_through_lm_eval.
if not getattr(sys.excepthook, _MARK, False):
    sys.excepthook = _one_line_errors(sys.excepthook)


class _OurTasksNeedNoHint(logging.Filter):
    """lm-eval tells every task built by a custom_dataset how to pass --metadata ('max_seq_lengths'),
    once per task and run: a hint about its own RULER tasks, not ours (docs/tasks.md lists our keys)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Custom kwargs can be passed to `--metadata`" not in message:
            return True
        return message.partition(":")[0] not in _OUR_TASKS


_OUR_TASKS = frozenset(catalogue_tasks(shipped_only=True))
# Replaces: lm-eval's warning about --metadata for each of our tasks (lm_eval.api.task's logger).
# Pinned by: tests/test_lm.py::test_lm_evals_metadata_hint_is_silenced_for_our_tasks_only.
_task_logger = logging.getLogger("lm_eval.api.task")
if not any(isinstance(f, _OurTasksNeedNoHint) for f in _task_logger.filters):
    _task_logger.addFilter(_OurTasksNeedNoHint())


def _register_models(argv: list[str]) -> None:
    """Import each engine's lm-eval model, which registers it: `qk_ablated` always, the others when
    the command names them (importing vLLM takes seconds, and it lives in an environment of its own)."""
    named = named_models(argv)
    for engine in ENGINES.values():
        if engine.name == "hf" or engine.model in named:
            try:
                engine.model_class()
            except Exception as error:  # the start-up hook prints its message as one line
                raise ModelUnavailable(engine.model, error) from error


# Last, so that our tasks, templates and one-line errors are in place even when an engine cannot be
# imported (a vLLM with a broken dependency, say).
_register_models(sys.argv)
