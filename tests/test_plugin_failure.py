"""When the plugin cannot be imported under lm_eval (a broken vLLM dependency, say), one line names the
package that failed, and a command that runs one of our models stops there instead of going on to
lm-eval's misleading `Tasks not found` (issue 24). Nothing here loads a model: all fail at start-up."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qk_ablate.startup import culprit, named_models, package_of

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
LM_EVAL = str(Path(sys.executable).with_name("lm_eval"))
BINDING_ERROR = "TypeError: load_lib_module() got an unexpected keyword argument 'extra_lib_paths'"


def _write_packages(where: Path, packages: dict[str, str]) -> Path:
    """Packages named by the keys, each an `__init__.py` holding the value."""
    for name, code in packages.items():
        (where / name).mkdir(parents=True)
        (where / name / "__init__.py").write_text(code)
    return where


def _broken_vllm(where: Path, prefix: str = "") -> Path:
    """A vLLM whose xgrammar calls an apache-tvm-ffi it does not match, as on the GPU host of issue 24."""
    return _write_packages(
        where,
        {
            f"{prefix}vllm": f"import {prefix}xgrammar\n",
            f"{prefix}xgrammar": f"from {prefix}tvm_ffi import load_lib_module\n\nload_lib_module('x', extra_lib_paths=[])\n",
            f"{prefix}tvm_ffi": "def load_lib_module(name):\n    return name\n",
        },
    )


def _lm_eval(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    # The editable install copies the hook into site-packages (a wheel force-include), so the
    # checkout's hook goes first on the path: these tests are about this source tree's hook.
    path = os.pathsep.join(str(p) for p in (SRC, pythonpath) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([LM_EVAL, *args], env=env, capture_output=True, text=True, timeout=300)


def _error_line(done: subprocess.CompletedProcess) -> str:
    """The one `qk-ablate: error:` line of a run that stopped at start-up, and nothing misleading."""
    lines = [line for line in done.stderr.splitlines() if line.startswith("qk-ablate: error:")]
    assert len(lines) == 1, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "Tasks not found" not in output and "Traceback" not in output, output[-3000:]
    return lines[0]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="this environment has vLLM")
def test_the_vllm_model_without_vllm_stops_with_one_line_naming_it():
    done = _lm_eval("--model", "qk_ablated_vllm", "--tasks", "passkey_1k")
    line = _error_line(done)
    assert done.returncode == 1
    assert line == (
        f"qk-ablate: error: qk_ablated_vllm needs vllm, which is not installed in this Python ({sys.executable}): "
        "run it from the vLLM environment, e.g. bash scripts/setup.sh --vllm and .venv-vllm/bin/lm_eval"
    )


def test_a_broken_vllm_dependency_stops_with_one_line_naming_it(tmp_path):
    done = _lm_eval("run", "--model=qk_ablated_vllm", "--tasks", "passkey_1k", pythonpath=_broken_vllm(tmp_path))
    line = _error_line(done)
    assert done.returncode == 1
    assert line == (
        "qk-ablate: error: qk_ablated_vllm needs vllm, which could not be imported: its dependency xgrammar "
        f"failed ({BINDING_ERROR}); reinstall a version of xgrammar that this vllm supports "
        "(docs/gpu.md lists a working set)"
    )


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """A folder on sys.path for made-up packages, which leave sys.modules as they found it."""
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("fake_"):
            del sys.modules[name]


def _import_error(name: str) -> Exception:
    try:
        importlib.import_module(name)
    except Exception as error:
        return error
    raise AssertionError(f"{name} imported")


def test_the_culprit_is_the_deepest_installed_package_whose_code_raised(fake_packages):
    # The TypeError is raised in xgrammar's frame (tvm_ffi's function never starts), under vllm's.
    _broken_vllm(fake_packages, prefix="fake_")
    error = _import_error("fake_vllm")
    assert f"{type(error).__name__}: {error}" == BINDING_ERROR
    assert culprit(error) == "fake_xgrammar"


def test_the_culprit_is_the_package_that_raised_inside_itself(fake_packages):
    _write_packages(
        fake_packages,
        {"fake_engine": "import fake_kernels\n", "fake_kernels": "raise RuntimeError('no kernel image for sm_90')\n"},
    )
    assert culprit(_import_error("fake_engine")) == "fake_kernels"


def test_the_culprit_of_an_import_error_is_the_module_it_names(fake_packages):
    _write_packages(fake_packages, {"fake_engine": "import fake_not_installed.sub\n"})
    error = _import_error("fake_engine")
    assert isinstance(error, ModuleNotFoundError)
    assert culprit(error) == "fake_not_installed"


def test_only_installed_third_party_files_belong_to_a_package():
    assert package_of("/opt/env/lib/python3.11/site-packages/xgrammar/kernels/__init__.py") == "xgrammar"
    assert package_of("/usr/lib/python3/dist-packages/six.py") == "six"
    assert package_of(json.__file__) is None  # the standard library
    assert package_of(str(SRC / "qk_ablate" / "plugin.py")) is None  # ours
    assert package_of(str(SRC / "qk_ablate_lm_eval_hook.py")) is None
    assert package_of("<frozen importlib._bootstrap>") is None


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["lm_eval", "--model", "qk_ablated_vllm", "--tasks", "passkey_1k"], ["qk_ablated_vllm"]),
        (["lm_eval", "run", "--model=qk_ablated", "--tasks", "passkey_1k"], ["qk_ablated"]),
        (["lm-eval", "-M", "qk_ablated_vllm"], ["qk_ablated_vllm"]),
        (["lm_eval", "-Mqk_ablated"], ["qk_ablated"]),
        (["lm_eval", "--model", "hf", "--output_path", "out/qk_ablated_vllm"], []),
        (["lm_eval", "ls", "tasks"], []),
    ],
)
def test_a_command_names_our_models_by_its_model_argument(argv, named):
    assert named_models(argv) == named


@pytest.fixture
def hook(monkeypatch):
    """This checkout's start-up hook (inert outside lm_eval), whose plugin import fails and whose
    exits are recorded."""
    spec = importlib.util.spec_from_file_location("_hook_under_test", SRC / "qk_ablate_lm_eval_hook.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "qk_ablate.plugin", None)  # its import raises ModuleNotFoundError
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)
    return module, exits


@pytest.mark.parametrize(("model", "stops"), [("hf", False), ("qk_ablated", True)])
def test_the_hook_stops_only_a_command_that_runs_our_model(hook, capsys, model, stops):
    module, exits = hook
    module._load_plugin(["lm_eval", "--model", model, "--tasks", "passkey_1k"])
    assert capsys.readouterr().err == (
        "qk-ablate: error: the qk-ablate lm-eval plugin could not be imported "
        "(ModuleNotFoundError: import of qk_ablate.plugin halted; None in sys.modules)\n"
    )
    assert exits == ([1] if stops else [])


def test_our_tasks_are_on_lm_evals_path_when_an_engine_cannot_be_imported(tmp_path):
    code = """
import sys
from lm_eval.tasks import TaskManager
seen = []
TaskManager.__init__ = lambda self, include_path=None, **kwargs: seen.append(include_path)
sys.argv = ["lm_eval", "--model", "qk_ablated_vllm"]
try:
    import qk_ablate.plugin
except ImportError as error:
    print(type(error).__name__, error.model)
from qk_ablate.paths import tasks_dir
TaskManager()
print(seen == [[tasks_dir()]])
"""
    env = {**os.environ, "PYTHONPATH": str(_broken_vllm(tmp_path))}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["ModelUnavailable", "qk_ablated_vllm", "True"], done.stderr[-3000:]
