"""Plain http to a loopback issuer is the issuer's explicit choice (issue 19, item 8):
any local OS user can bind a free loopback port and serve keys there."""

from __future__ import annotations

import psycopg
import pytest
from conftest import attempt, until


def test_loopback_http_issuer_needs_allow_loopback_http(cluster, issuer):
    assert issuer.issuer.startswith("http://127.0.0.1:")
    try:
        cluster.sql("UPDATE oauth.issuers SET allow_loopback_http = false WHERE issuer = %s",
                    (issuer.issuer,))
        cluster.sql("ALTER SYSTEM SET pg_oauth.client_detail = 'full'")
        cluster.reload()
        # the workers drop the keys they fetched under the old policy
        until(lambda: attempt(cluster, "alice", issuer.mint(sub="alice")) == "jwks_unavailable",
              what="the loopback issuer refused")
        with pytest.raises(psycopg.OperationalError) as excinfo:
            cluster.token_connect("alice", issuer.mint(sub="alice"))
        message = str(excinfo.value)
        assert "plain http is refused" in message and "allow_loopback_http" in message
    finally:
        cluster.sql("UPDATE oauth.issuers SET allow_loopback_http = true WHERE issuer = %s",
                    (issuer.issuer,))
        cluster.sql("ALTER SYSTEM RESET pg_oauth.client_detail")
        cluster.reload()
    until(lambda: attempt(cluster, "alice", issuer.mint(sub="alice")) == "ok",
          what="the loopback issuer admitted again")
