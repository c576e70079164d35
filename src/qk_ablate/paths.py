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
