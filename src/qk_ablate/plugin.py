"""lm-eval integration: the `qk_ablated` model, our tasks on the default search path, one-line errors.

Imported by the start-up hook when the `lm_eval` CLI runs; importing it by hand does the same.
"""

from __future__ import annotations

import functools
import sys

import lm_eval.models  # noqa: F401  (lm-eval's own models are registered before ours)
from lm_eval.tasks import TaskManager

import qk_ablate.lm  # noqa: F401  (registers `qk_ablated`)
from qk_ablate.errors import QKAblateError
from qk_ablate.paths import tasks_dir


def _with_our_tasks(init):
    @functools.wraps(init)
    def wrapper(self, *args, include_path=None, **kwargs):
        paths = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
        ours = tasks_dir()
        if ours not in map(str, paths):
            paths.insert(0, ours)  # user paths come later and may override ours
        return init(self, *args, include_path=paths, **kwargs)

    wrapper.__qk_ablate__ = True
    return wrapper


if not getattr(TaskManager.__init__, "__qk_ablate__", False):
    TaskManager.__init__ = _with_our_tasks(TaskManager.__init__)


def _one_line_errors(hook):
    def excepthook(kind, value, traceback):
        if isinstance(value, QKAblateError):
            print(f"qk-ablate: error: {value}", file=sys.stderr)
            return
        hook(kind, value, traceback)

    excepthook.__qk_ablate__ = True
    return excepthook


if not getattr(sys.excepthook, "__qk_ablate__", False):
    sys.excepthook = _one_line_errors(sys.excepthook)
