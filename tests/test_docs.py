"""Every relative link in README.md and docs/ points to a file that exists, and an anchor to a heading that exists.

Links are read the way GitHub renders them: `[text](target)` and `![alt](target)` outside code; an anchor is the
heading's GitHub slug (lower case, punctuation dropped, spaces to hyphens). Links to the web are not followed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


DRAFTS = "_incoming"  # docs/_incoming/: helpers' drafts, waiting to be placed in the pages


def pages(root: Path = ROOT) -> list[Path]:
    docs = [p for p in sorted((root / "docs").rglob("*.md")) if DRAFTS not in p.relative_to(root).parts]
    return [root / "README.md", *docs]


def prose(text: str) -> str:
    """The text a reader sees as prose: fenced code blocks and inline code removed."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in HEADING.findall(FENCE.sub("", page.read_text()))}


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """`target (why)` for each relative link of the page that leads nowhere."""
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...: not a file of the repo
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(root) if dest.is_relative_to(root) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    return broken


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_a_planted_broken_link_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# Sequential seeds: make decide\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/there.md) [ok](docs/there.md#sequential-seeds-make-decide) [web](https://example.org/x.md)\n"
        "`[in code](nowhere.md)`\n```\n[in a block](nowhere.md)\n```\n"
        "[gone](docs/missing.md) ![gone](docs/img/missing.png) [bad anchor](docs/there.md#no-such-heading)\n"
    )
    assert [b.split(" ")[0] for b in broken_links(tmp_path / "README.md", tmp_path)] == [
        "docs/missing.md",
        "docs/img/missing.png",
        "docs/there.md#no-such-heading",
    ]


def test_every_docs_page_is_reachable_from_the_index():
    """A page no one links to is a page no one finds: docs/index.md names every page of docs/."""
    index = ROOT / "docs" / "index.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for t in LINK.findall(prose(index.read_text()))}
    assert [p.relative_to(ROOT).as_posix() for p in pages()[1:] if p.resolve() not in linked and p != index] == []
