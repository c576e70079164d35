"""The folder tree is the design: these rules keep it so.

- `core` (the intervention) imports no engine, probe, statistic or loader, and neither
  transformers, vLLM nor lm-eval;
- the engines (`engines.hf`, `engines.vllm`) do not import each other;
- `stats` (runs, comparisons, report, gate) imports neither torch nor an engine, so
  `qk-ablate report` and `gate` run without them;
- `import qk_ablate` loads no torch; no import cycle between our modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "qk_ablate"


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(path: Path) -> set[str]:
    """Every module `path` imports by name (ours and third-party), at the top or inside functions alike."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _ours(path: Path, modules: dict[str, Path]) -> set[str]:
    return {name for name in _imported(path) if name in modules}


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


MODULES = _modules()
GRAPH = {name: _ours(path, MODULES) - {name} for name, path in MODULES.items()}


def _closure(start: str) -> set[str]:
    """Our modules `start` reaches through imports (itself included)."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(GRAPH[name] - {PACKAGE})  # the package face imports lazily
    return seen


def test_no_import_cycle_between_our_modules():
    state: dict[str, str] = {}
    graph = {name: deps - {PACKAGE} for name, deps in GRAPH.items()}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", "import cycle: " + " -> ".join([*trail[trail.index(name) :], name])
        state[name] = "open"
        for dep in sorted(graph[name]):
            visit(dep, [*trail, name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])


FORBIDDEN = {
    "qk_ablate.core": (
        "qk_ablate.engines",
        "qk_ablate.probes",
        "qk_ablate.stats",
        "qk_ablate.models",
        "qk_ablate.task_data",
        "qk_ablate.cli",
        "qk_ablate.sweep",
        "qk_ablate.plugin",
        "transformers",
        "vllm",
        "lm_eval",
    ),
    "qk_ablate.engines.hf": ("qk_ablate.engines.vllm", "vllm"),
    "qk_ablate.engines.vllm": ("qk_ablate.engines.hf",),
    "qk_ablate.stats": ("torch", "transformers", "vllm", "qk_ablate.engines", "qk_ablate.probes", "qk_ablate.models"),
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_package_stays_off_what_it_must_not_import(package):
    """Through every chain of our imports, not only the direct ones."""
    broken = []
    for name in sorted(n for n in MODULES if _in(n, package)):
        for reached in sorted(_closure(name)):
            for other in sorted(_imported(MODULES[reached])):
                if any(_in(other, bad) for bad in FORBIDDEN[package]):
                    broken.append(f"{name} -> {reached} imports {other}")
    assert not broken, "\n".join(broken)


def _loaded(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "code",
    [
        "import qk_ablate",
        "import qk_ablate.stats.report, qk_ablate.stats.gate, qk_ablate.stats.seeds",
        "from qk_ablate.cli import main\ntry:\n    main(['report', '--help'])\nexcept SystemExit:\n    pass",
        "from qk_ablate.cli import main\ntry:\n    main(['gate', '--help'])\nexcept SystemExit:\n    pass",
    ],
)
def test_the_package_face_report_and_gate_load_no_torch(code):
    loaded = _loaded(code)
    assert "torch" not in loaded and "transformers" not in loaded, code


def test_the_package_face_gives_its_names_on_first_use():
    loaded = _loaded("import qk_ablate\nassert qk_ablate.InterventionSpec(ablate='massive').ablate == 'massive'")
    assert "qk_ablate.core.spec" in loaded and "torch" not in loaded


def test_the_vllm_engine_does_not_import_the_hf_engine():
    """Statically (above), and by what importing its driver-side modules without vLLM loads."""
    loaded = _loaded("import qk_ablate.engines.vllm.compat")
    assert not any(_in(name, "qk_ablate.engines.hf") for name in loaded)


def _shown(path: Path) -> str:
    """How ARCHITECTURE.md names a module: its path inside the package (`engines/hf/lm.py`)."""
    return str(path.relative_to(SRC / PACKAGE)) if path.is_relative_to(SRC / PACKAGE) else path.name


def test_architecture_md_names_every_module():
    text = (SRC.parent / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = [
        name for name, path in sorted(MODULES.items()) if path.name != "__init__.py" and _shown(path) not in text
    ]
    assert not missing, f"ARCHITECTURE.md does not name: {', '.join(missing)}"


SPLIT_AT = 450  # formatted lines; aim under 350 and split a module that grows by role


def test_no_module_outgrows_its_role():
    """A guideline with a backstop: `ruff format --check` runs in CI, so a module cannot be kept short by
    packing lines; one past SPLIT_AT formatted lines holds more than one idea and is split by role."""
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > SPLIT_AT}
    assert not long, long


def test_committed_samples_are_gzipped():
    """The GPU machine takes the working tree and a wheel part in one 64 MiB call, so committed
    per-document samples stay gzipped (`stats.runs` reads either form)."""
    listed = subprocess.run(
        ["git", "ls-files", "results"], cwd=SRC.parent, capture_output=True, text=True, check=False
    ).stdout.split()
    if not listed:
        pytest.skip("not a git checkout")
    plain = [name for name in listed if name.endswith(".jsonl")]
    assert not plain, f"gzip these (gzip -9 -n): {plain[:3]}"
