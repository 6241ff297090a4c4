"""docs/development.md's source layout names every C file of the extension and every
Python package."""

from __future__ import annotations

from unit_support import ROOT


def test_the_source_layout_names_every_c_file() -> None:
    doc = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Source layout"):]
    section = section[:section.index("\n## ", 1)]
    files = sorted(p.name for p in (ROOT / "pg_oauth_ext").glob("*.c"))
    assert files, "no C files found"
    missing = [name for name in files if f"`{name}`" not in section]
    assert not missing, f"docs/development.md's source layout leaves out {missing}"


def test_the_source_layout_names_every_python_package() -> None:
    """Every directory of the tree that is a Python package, or holds one (pyproject.toml)."""
    doc = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Source layout"):]
    section = section[:section.index("\n## ", 1)]
    packages = sorted({p.parent.name for pattern in ("*/__init__.py", "*/pyproject.toml")
                       for p in ROOT.glob(pattern)})  # fmt: skip
    assert {"pyhook", "client", "devtools"} <= set(packages), packages
    missing = [name for name in packages if f"- `{name}/` — " not in section]
    assert not missing, f"docs/development.md's source layout leaves out {missing}"
