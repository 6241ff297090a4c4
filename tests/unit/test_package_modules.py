"""pyhook/__init__.py says what each module of the package is: the list stays whole."""

from __future__ import annotations

import re

from unit_support import ROOT

import pyhook


def test_the_package_docstring_names_every_module() -> None:
    listed = re.findall(r"^- ``(\w+)``: ", pyhook.__doc__ or "", re.MULTILINE)
    modules = sorted(p.stem for p in (ROOT / "pyhook").glob("*.py") if p.name != "__init__.py")
    assert modules, "no modules found"
    assert len(listed) == len(set(listed)), f"named twice: {listed}"
    missing = sorted(set(modules) - set(listed))
    assert not missing, f"pyhook/__init__.py does not say what {missing} is"
    gone = sorted(set(listed) - set(modules))
    assert not gone, f"pyhook/__init__.py names modules that are not there: {gone}"
