"""Where our lm-eval task YAMLs are: inside the wheel, or at the repository root when editable."""

from __future__ import annotations

from pathlib import Path


def tasks_dir() -> str:
    """The folder to give lm-eval's TaskManager as `include_path`."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "tasks", here.parent.parent / "tasks"):
        if candidate.is_dir():
            return str(candidate)
    raise FileNotFoundError("qk-ablate's task folder is missing from this installation; reinstall qk-ablate")


TEMPLATE_PREFIX = "qk_ablate:"


def template_path(name: str) -> Path:
    """The file behind `include: qk_ablate:<name>` in a user's task YAML."""
    from qk_ablate.errors import QKAblateError

    folder = Path(tasks_dir()) / "templates"
    path = folder / name
    if not name or "/" in name or not path.is_file():
        known = ", ".join(sorted(TEMPLATE_PREFIX + p.name for p in folder.iterdir() if p.is_file()))
        raise QKAblateError(f"unknown task template '{TEMPLATE_PREFIX}{name}'; qk-ablate ships {known}")
    return path
