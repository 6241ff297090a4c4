"""The README's table of reason codes is the full list: every code the validator (pyhook)
or the extension (pg_oauth_ext/*.c) can give a refusal has its row, once, and every row
is a code one of them gives."""

from __future__ import annotations

import re

from unit_support import ROOT

from pyhook.errors import REASONS

C_SOURCES = sorted((ROOT / "pg_oauth_ext").glob("*.c"))


def table_codes() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Refusals and reason codes\n"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE)


def extension_codes() -> set[str]:
    """The codes the C side hands to a refusal, a failed decision or its counters."""
    codes: set[str] = set()
    for path in C_SOURCES:
        text = path.read_text(encoding="utf-8")
        codes.update(re.findall(
            r"\b(?:login_refuse|decision_fail|set_failure)\([^;\"]*\"([a-z_]+)\"", text))
        codes.update(re.findall(r"\breason = \"([a-z_]+)\"", text))
    counted = (ROOT / "pg_oauth_ext" / "login_stats.c").read_text(encoding="utf-8")
    array = re.search(r"reason_codes\[\] = \{(.*?)\};", counted, re.DOTALL)
    assert array, "login_stats.c: no reason_codes array"
    codes.update(set(re.findall(r"\"([a-z_]+)\"", array.group(1))) - {"other"})
    return codes


def test_every_code_has_one_row() -> None:
    rows = table_codes()
    assert len(rows) == len(set(rows)), sorted(r for r in rows if rows.count(r) > 1)
    known = set(REASONS) | extension_codes()
    assert len(known) > 25
    assert not known - set(rows), f"reason codes without a row: {sorted(known - set(rows))}"


def test_every_row_is_a_code_the_sources_give() -> None:
    sources = "\n".join(p.read_text(encoding="utf-8") for p in C_SOURCES)
    invented = [code for code in table_codes()
                if code not in REASONS and f'"{code}"' not in sources]  # fmt: skip
    assert not invented, invented
