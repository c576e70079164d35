"""The built wheel ships our tasks and the lm_eval start-up hook, and works outside the source tree."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from qk_ablate.task_data.catalogue import GROUPS, tasks

ROOT = Path(__file__).resolve().parents[1]
# Every task of the catalogue (gsm8k is lm-eval's own, qk_gsm8k our offline one), and the groups.
CATALOGUE_TASKS = tasks() + list(GROUPS)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    (path,) = out.glob("qk_ablate-*.whl")
    return path


def test_wheel_contains_tasks_and_start_up_hook(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "qk_ablate_lm_eval.pth",
        "qk_ablate_lm_eval_hook.py",
        "qk_ablate/tasks/passkey/passkey_1k.yaml",
        "qk_ablate/tasks/city_facts/city_facts.yaml",
        "qk_ablate/tasks/groups/qk_contextual.yaml",
        "qk_ablate/tasks/templates/facts_csv",
        "qk_ablate/tasks/templates/niah_documents",
    } <= names


@pytest.mark.slow
def test_installed_wheel_lists_our_tasks_through_stock_lm_eval(wheel, tmp_path):
    # A fresh venv that gets qk-ablate only from the wheel and borrows the dependencies of this
    # environment through a plain path line (so this environment's editable install stays inactive).
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"], check=True, capture_output=True, text=True
    ).stdout.strip()
    deps = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "lm_eval").is_dir())
    Path(site, "_borrowed_dependencies.pth").write_text(deps + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    where = subprocess.run(
        [python, "-c", "import qk_ablate.paths as p; print(p.tasks_dir())"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout.strip()
    assert where.startswith(str(env_dir)), where
    listing = subprocess.run([python, "-m", "lm_eval", "ls", "tasks"], capture_output=True, text=True, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr[-2000:]
    listed = {cell.strip() for line in listing.stdout.splitlines() for cell in line.split("|")[1:2]}
    missing = [name for name in CATALOGUE_TASKS if name not in listed]
    assert not missing, missing
