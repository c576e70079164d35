"""The report page (`stats/page.py`) in a real headless browser: it loads with no network, sorts a
column, and links a changed cell to its documents. Chromium comes from the system packages
(`.ci/run` installs it); without one the browser test is skipped with one line."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from qk_ablate.stats.page import changed_documents
from qk_ablate.stats.report import build_report, write_report
from test_report import load_run, write_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture
def page(tmp_path):
    """Baseline and three interventions losing 0, 10 and 30 of 40 pass keys (and 0, 2, 4 cities)."""
    keys = [1.0] * 40
    runs = [write_run(tmp_path / "base", {"passkey_1k": keys, "city_facts": [1.0] * 20})]
    for name, lost, facts in (("a", 10, 2), ("b", 30, 4), ("c", 0, 0)):
        scores = {"passkey_1k": [0.0] * lost + [1.0] * (40 - lost), "city_facts": [0.0] * facts + [1.0] * (20 - facts)}
        runs.append(
            write_run(tmp_path / name, scores, {"ablate": "massive", "lam": {"a": 4.0, "b": 3.0, "c": 6.0}[name]})
        )
    report = build_report([load_run(r) for r in runs], iterations=200)
    written = write_report(report, tmp_path / "out")
    return next(p for p in written if p.suffix == ".html"), report


def test_the_page_holds_everything_inline_and_links_changed_cells(page):
    path, report = page
    text = path.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text and 'src="report' not in text  # nothing fetched
    assert '<th class="group" colspan="1">contextual tasks</th>' in text and "parametric tasks" in text
    assert '<a href="#changed-1-passkey_1k">' in text and '<details id="changed-1-passkey_1k">' in text
    assert "10 documents changed" in text and "30 documents changed" in text
    base, lost = report.rows[0][0], report.rows[2][0]
    assert len(changed_documents(base.tasks["passkey_1k"], lost.tasks["passkey_1k"])) == 30


def _browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def test_a_real_browser_sorts_a_column(page):
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium here (`apt-get install chromium`; .ci/run installs it)")
    path, _ = page

    def rows_after(fragment: str) -> list[str]:
        done = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", f"file://{path}{fragment}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        body = done.stdout.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
        return re.findall(r'<td data-value="">(baseline|ablate=massive,lam=[0-9.]+)</td>', body)

    assert rows_after("") == ["baseline", "ablate=massive,lam=4.0", "ablate=massive,lam=3.0", "ablate=massive,lam=6.0"]
    # by the passkey delta, largest loss first: -75, -25, 0 (the baseline's row counts as no change)
    ordered = [label for label in rows_after("#sort=passkey_1k,asc") if label != "baseline"]
    assert ordered == ["ablate=massive,lam=3.0", "ablate=massive,lam=4.0", "ablate=massive,lam=6.0"]
    ordered = [label for label in rows_after("#sort=passkey_1k,desc") if label != "baseline"]
    assert ordered == ["ablate=massive,lam=6.0", "ablate=massive,lam=4.0", "ablate=massive,lam=3.0"]
    assert rows_after("#sort=city_facts,asc")[0] == "ablate=massive,lam=3.0"  # -20 points, the largest loss
