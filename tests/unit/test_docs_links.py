"""Every relative link of the README and docs/*.md leads somewhere: the file exists and,
for a link to a section (#anchor), a heading of that file makes that anchor as GitHub
does. Text moved between the docs must take its links along."""

from __future__ import annotations

import re
from pathlib import Path

from unit_support import ROOT

FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1\s*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose(path: Path) -> str:
    """The file without its fenced code blocks (a `# comment` there is no heading)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, punctuation but hyphens and
    underscores dropped, spaces made hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for heading in HEADING.findall(prose(path)):
        base = anchor(heading)
        name, n = base, 0
        while name in found:  # a repeated heading gets -1, -2, ...
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(path)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, fragment = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no such section in {linked.name}")
    return broken


def test_anchors_are_made_as_github_makes_them() -> None:
    assert anchor("OAUTHBEARER (PostgreSQL 18+)") == "oauthbearer-postgresql-18"
    assert anchor("Calling `oauth.explain` safely") == "calling-oauthexplain-safely"
    assert anchor("`pg_oauth.client_detail`") == "pg_oauthclient_detail"


def test_every_relative_link_resolves() -> None:
    assert len(documents()) > 5
    broken = {str(p.relative_to(ROOT)): b for p in documents() if (b := broken_links(p))}
    assert not broken, broken


def test_the_checker_sees_a_broken_link(tmp_path: Path) -> None:
    doc = tmp_path / "a.md"
    doc.write_text("# A title\n\n```sh\n# not a heading\n```\n"
                   "[ok](#a-title) [gone](#not-a-heading) [no file](b.md)\n")
    assert broken_links(doc) == ["#not-a-heading: no such section in a.md",
                                 "b.md: no such file"]
