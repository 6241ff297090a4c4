"""The README's file map names every C file of the extension."""

from __future__ import annotations

from unit_support import ROOT


def test_the_readme_names_every_c_file() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## How it works"):]
    section = section[:section.index("\n## ", 1)]
    files = sorted(p.name for p in (ROOT / "pg_oauth_ext").glob("*.c"))
    assert files, "no C files found"
    missing = [name for name in files if f"`{name}`" not in section]
    assert not missing, f"README's file map leaves out {missing}"
