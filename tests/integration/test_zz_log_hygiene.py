"""Runs last: no token minted during the whole suite appears in any server log."""

from __future__ import annotations

from conftest import CLUSTERS, MINTED


def test_no_token_text_in_server_logs(cluster):
    assert MINTED, "the suite minted tokens"
    assert CLUSTERS
    fragments = set()
    for token in MINTED:
        parts = token.split(".")
        fragments.add(token)
        # the payload and signature parts on their own (headers repeat, and are not secret)
        fragments.update(p for p in parts[1:] if len(p) >= 16)
    for c in CLUSTERS:
        log = c.log_text()
        assert log, f"empty log for {c.base}"
        leaked = [f[:12] + "..." for f in fragments if f in log]
        assert not leaked, f"token text in {c.logfile}: {leaked[:5]}"
