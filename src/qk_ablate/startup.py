"""What the lm_eval start-up hook and the plugin share: which of our models a command names, and the
one line that says why the plugin could not be imported.

A broken dependency (a vLLM whose xgrammar does not match its apache-tvm-ffi, say) fails deep in an
import chain through lm-eval and vLLM; left alone, lm_eval goes on and reports `Tasks not found`.
The line names the package that failed (the one an ImportError names, else the one whose code
raised), the package our model needed that pulled it in, and how to fix it. It imports neither
torch, lm-eval nor vLLM, so that it works when they are what is broken.
"""

from __future__ import annotations

import sys
import sysconfig
import traceback
from pathlib import Path

from qk_ablate.engines import ENGINES

HOST = "lm_eval"  # the program that imports us: its frames are the way in, not what a model needs
OURS = ("qk_ablate", "qk_ablate_lm_eval_hook")
PLUGIN = "the qk-ablate lm-eval plugin"  # who needed the package, when no one model did
# For a package our engines need: the environment that has it, and where a working set is listed.
ENVIRONMENT_OF = {
    "vllm": "run it from the vLLM environment, e.g. bash scripts/setup.sh --vllm and .venv-vllm/bin/lm_eval"
}
WORKING_SET = {"vllm": " (docs/gpu.md lists a working set)"}


class ModelUnavailable(ImportError):
    """One of our lm-eval models could not be imported; the message is the line that says why."""

    def __init__(self, model: str, cause: BaseException) -> None:
        super().__init__(explain(cause, model))
        self.model = model


def named_models(argv: list[str]) -> list[str]:
    """Our lm-eval models the command line names (`--model NAME`, `--model=NAME`, `-M NAME`, `-MNAME`)."""
    return [
        engine.model
        for engine in ENGINES.values()
        if {engine.model, f"--model={engine.model}", f"-M{engine.model}"} & set(argv)
    ]


def failure_line(error: BaseException) -> str:
    """The line for a plugin import that raised `error`: for the model that failed, else the plugin."""
    return str(error) if isinstance(error, ModelUnavailable) else explain(error, PLUGIN)


def package_of(filename: str) -> str | None:
    """The top-level package of an installed third-party source file; None for ours, the standard
    library's and frozen or generated code."""
    path = Path(filename)
    if not path.is_absolute():  # <frozen importlib._bootstrap>, <string>
        return None
    markers = [i for i, part in enumerate(path.parts) if part in ("site-packages", "dist-packages")]
    if markers:
        rest = path.parts[markers[-1] + 1 :]
    elif path.is_relative_to(sysconfig.get_paths()["stdlib"]):
        return None
    else:
        roots = [Path(entry) for entry in sys.path if entry and path.parent.is_relative_to(entry)]
        if not roots:
            return None
        rest = path.relative_to(max(roots, key=lambda root: len(root.parts))).parts
    top = rest[0].removesuffix(".py")
    return None if top in OURS else top


def _frame_packages(error: BaseException) -> list[str]:
    """The third-party package of each frame of `error`'s traceback, outermost first."""
    found = (package_of(frame.filename) for frame in traceback.extract_tb(error.__traceback__))
    return [package for package in found if package]


def culprit(error: BaseException) -> str | None:
    """The package that failed: the one an ImportError names, else the deepest third-party frame's."""
    name = getattr(error, "name", None) if isinstance(error, ImportError) else None
    if name and name.split(".")[0] not in OURS:
        return name.split(".")[0]
    packages = _frame_packages(error)
    return packages[-1] if packages else None


def _summary(error: BaseException) -> str:
    """`Type: first line of the message`."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def explain(error: BaseException, who: str) -> str:
    """Why `who` (a model, or the plugin) could not be imported, and how to fix it, in one line."""
    failed = culprit(error)
    if failed is None:
        return f"{who} could not be imported ({_summary(error)})"
    needed = next((package for package in _frame_packages(error) if package != HOST), failed)
    missing = isinstance(error, ModuleNotFoundError) and error.name == failed  # not a submodule of it
    if needed == failed and missing:
        fix = ENVIRONMENT_OF.get(failed, "install it, or run the lm_eval of an environment that has it")
        return f"{who} needs {failed}, which is not installed in this Python ({sys.executable}): {fix}"
    if needed == failed:
        return (
            f"{who} needs {failed}, which could not be imported ({_summary(error)}); "
            f"reinstall a working version of {failed}{WORKING_SET.get(failed, '')}"
        )
    verb, state = ("install", "is not installed") if missing else ("reinstall", "failed")
    return (
        f"{who} needs {needed}, which could not be imported: its dependency {failed} {state} "
        f"({_summary(error)}); {verb} a version of {failed} that this {needed} supports{WORKING_SET.get(needed, '')}"
    )
