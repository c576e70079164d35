"""The documentation holds together: the entry page is short and starts with the two commands, and
every relative link in README.md, ARCHITECTURE.md and docs/*.md reaches a file (and a heading)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]

MAIN_JOB = "bash scripts/setup.sh && .venv/bin/qk-ablate sweep configs/demo.yaml"
TESTS = "bash scripts/test.sh"

FENCE = re.compile(r"^(```|~~~)")
# [text](target) and ![alt](target), with an optional "title"; the text may hold code spans
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose(text: str) -> list[str]:
    """The page's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block, in order."""
    blocks, info, body = [], None, []
    for line in text.splitlines():
        match = FENCE.match(line.lstrip())
        if match and info is None:
            info, body = line.lstrip()[3:].strip(), []
        elif match:
            blocks.append((info, "\n".join(body)))
            info = None
        elif info is not None:
            body.append(line)
    return blocks


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lowercase, punctuation other than '-' and '_'
    dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters of any script, digits and '_'
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a markdown page, with GitHub's -1, -2 ... for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for line in _prose(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    """Every link target on the page outside code blocks and code spans."""
    found = []
    for line in _prose(page.read_text(encoding="utf-8")):
        # code spans are not links, but link text may be a code span: keep the brackets around it
        line = CODE_SPAN.sub("code", line)
        found.extend(match.group(1) for match in LINK.finditer(line))
    return found


def _external(target: str) -> bool:
    return bool(re.match(r"^(https?:|mailto:|ftp:|//)", target, re.IGNORECASE))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        if _external(target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_the_docs_are_there():
    names = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert "README.md" in names and len(names) > 1
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    unlisted = sorted(n for n in names - {"README.md"} if f"({n})" not in index)
    assert not unlisted, f"docs/README.md does not link: {', '.join(unlisted)}"


def test_readme_is_an_entry_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_starts_with_the_two_commands():
    bash = [
        body.strip()
        for info, body in _fenced_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
        if info.split()[:1] in (["bash"], ["sh"], ["shell"], ["console"])
    ]
    assert bash[:2] == [MAIN_JOB, TESTS]


def test_slug_follows_github():
    assert slug("What the main job prints") == "what-the-main-job-prints"
    assert slug("Which arguments follow the paper's text and which its code") == (
        "which-arguments-follow-the-papers-text-and-which-its-code"
    )
    assert slug("The vLLM engine (`qk_ablated_vllm`)") == "the-vllm-engine-qk_ablated_vllm"
    assert slug("Magnitude or band?") == "magnitude-or-band"
    assert slug("Arguments, several GPUs, large models") == "arguments-several-gpus-large-models"
