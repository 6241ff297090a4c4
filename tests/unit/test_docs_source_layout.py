"""docs/development.md's source layout names every C file of the extension, every
Python package and every top-level directory."""

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


def test_the_source_layout_names_every_top_level_directory() -> None:
    """A directory added at the top (monitoring/, say) is said what it holds. What the
    build and pip leave (.gitignore: build/, dist/, *.egg-info/) is not source."""
    doc = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Source layout"):]
    section = section[:section.index("\n## ", 1)]
    generated = {"build", "dist", "node_modules", "tmp"}
    directories = sorted(p.name for p in ROOT.iterdir()
                         if p.is_dir() and not p.name.startswith(".")
                         and p.name not in generated and not p.name.endswith(".egg-info"))  # fmt: skip
    assert "monitoring" in directories, directories
    # "- `tests/unit` (no server) and `tests/integration` ...": a bullet of its own
    missing = [name for name in directories if f"- `{name}/" not in section]
    assert not missing, f"docs/development.md's source layout leaves out {missing}"
