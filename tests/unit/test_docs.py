"""The user-facing documentation (README.md and docs/**/*.md) is complete and self-contained.

- no placeholder text ("To be written", "TODO", "TBD");
- every relative link points at a file of the repository, and every `#anchor` at a heading of
  the file it names (GitHub's slug rules);
- no reference to files outside the project (a `../shared` link, `shared/ARCHITECTURE.md`, a
  link that climbs out of the repository): a user of the project does not have them.

Fenced code blocks are skipped: a `# comment` in a shell example is not a heading, and
`[x](y)` inside code is not a link.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])

PLACEHOLDER = re.compile(r"To be written|\bTODO\b|\bTBD\b", re.IGNORECASE)
OUTSIDE = re.compile(r"\.\./shared|shared/ARCHITECTURE\.md|shared/EXAMPLES\.md")
LINK = re.compile(
    r"(?<!!)\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)"
)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.lstrip()
        marker = stripped[:3]
        if marker in ("```", "~~~"):
            if fence is None:
                fence = marker
            elif marker == fence:
                fence = None
            continue
        if fence is None:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text only
    kept = [c for c in text.lower() if c in " -_" or unicodedata.category(c)[0] in "LN"]
    return "".join(kept).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in prose_lines(path):
        match = HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def links(path: Path) -> list[tuple[int, str]]:
    out = []
    for number, line in prose_lines(path):
        line = re.sub(r"`[^`]*`", "", line)  # code spans are not links
        out.extend((number, m.group(1) or m.group(2)) for m in LINK.finditer(line))
    return out


def problems_with(path: Path, target: str) -> str | None:
    """Why a link from `path` to `target` is dead, or None."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):
        return None  # https:, mailto:: not checked here (no network)
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    if not dest.is_relative_to(REPO):
        return f"points outside the project: {target}"
    if not dest.exists():
        return f"no such file: {target}"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"no heading with anchor #{anchor} in {dest.relative_to(REPO)}"
    return None


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(REPO)) for p in paths]


@pytest.mark.parametrize("path", DOCS, ids=ids(DOCS))
def test_no_placeholder_text(path: Path) -> None:
    found = [f"{n}: {line.strip()}" for n, line in prose_lines(path) if PLACEHOLDER.search(line)]
    assert found == [], f"{path.relative_to(REPO)} has placeholder text"


@pytest.mark.parametrize("path", DOCS, ids=ids(DOCS))
def test_no_reference_outside_the_project(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    found = [f"{n}: {line.strip()}" for n, line in enumerate(lines, 1) if OUTSIDE.search(line)]
    assert found == [], f"{path.relative_to(REPO)} refers to files a user does not have"


@pytest.mark.parametrize("path", DOCS, ids=ids(DOCS))
def test_relative_links_resolve(path: Path) -> None:
    dead = []
    for number, target in links(path):
        problem = problems_with(path, target)
        if problem is not None:
            dead.append(f"{number}: {problem}")
    assert dead == [], f"{path.relative_to(REPO)} has dead links"


def test_readme_lists_every_document() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"\]\((docs/[^)#]+\.md)", readme))
    missing = {str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")} - listed
    assert missing == set(), "README's documentation list should name every docs/*.md"


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Departs from `x/ARCH.md`", "departs-from-xarchmd"),
        ("Clients, auth, TLS listener, limits", "clients-auth-tls-listener-limits"),
        ("Shutdown: grace period and drain", "shutdown-grace-period-and-drain"),
        ("A refusal, as each client shows it", "a-refusal-as-each-client-shows-it"),
        ("`tls_listen`", "tls_listen"),
    ],
)  # fmt: skip
def test_slug_follows_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_checker_finds_a_dead_link_and_a_placeholder(tmp_path: Path) -> None:
    assert problems_with(REPO / "README.md", "docs/nope.md") == "no such file: docs/nope.md"
    assert "no heading" in (problems_with(REPO / "README.md", "docs/operations.md#nope") or "")
    assert "outside" in (problems_with(REPO / "README.md", "../shared/ARCHITECTURE.md") or "")
    assert problems_with(REPO / "README.md", "docs/operations.md#graceful-shutdown") is None
    assert PLACEHOLDER.search("> **To be written by the lead:** ...")
