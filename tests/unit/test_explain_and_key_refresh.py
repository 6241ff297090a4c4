"""oauth.explain in a DBA's session (no message, no literal token, the workers' keys)
and the workers' side of oauth.refresh_keys(), with the stand-in for ``plpy``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from pg_oauth_dev.dev_issuer import DevIssuer
from test_plpython_adapter import (
    JWKS_URL,
    FakePlan,
    FakePlpy,
    FakeSpiError,
    remote_adapter,
    remote_plpy,
)
from unit_support import AUD, ISS, ROOT, Documents, issuer_row, rule_row

from pyhook.config import Config
from pyhook.errors import UnknownKey
from pyhook.jwks_cache import KeyStore
from pyhook.plpython_adapter import Adapter, written_into
from pyhook.server_explain import (
    OPTIONAL_QUIET_SETTINGS,
    QUIET_SETTINGS,
    ServerExplainError,
    quiet_transaction,
)
from pyhook.sql_queries import CURRENT_QUERY_QUERY, ISSUERS_QUERY, JWKS_CACHE_QUERY
from pyhook.sql_rows import statement_refusal_rows


class SessionPlpy(FakePlpy):
    """Also the statement the client sent (a DBA's session), and the time of the
    last committed oauth.refresh_keys() (oauth._keys_dropped_at)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.statement = "SELECT * FROM oauth.explain($1, $2, $3)"
        self.dropped_at = float("-inf")

    def execute(self, plan: FakePlan, args: list[Any] | None = None) -> Any:
        if plan.query == CURRENT_QUERY_QUERY:
            self.executed.append(plan.query)
            return [{"query": self.statement}]
        rows = super().execute(plan, args)
        if plan.query == JWKS_CACHE_QUERY:
            return [r for r in rows if r["fetched_at"] > self.dropped_at]
        return rows


def session(plpy: FakePlpy) -> SessionPlpy:
    copy = SessionPlpy(plpy.issuers, plpy.rules)
    copy.jwks_cache = plpy.jwks_cache
    return copy


@pytest.fixture
def plpy(static_jwks: str) -> SessionPlpy:
    return SessionPlpy([issuer_row(jwks=static_jwks)], [rule_row(1, "(alice|bob)", r"\1")])


@pytest.fixture
def token(dev: DevIssuer) -> str:
    return dev.mint({"iss": ISS}, aud=AUD, sub="alice")


def stored_row(jwks: dict[str, Any], fetched_at: float) -> dict[str, Any]:
    return {"issuer": ISS, "jwks_uri": JWKS_URL, "discovered": False,
            "jwks": json.dumps(jwks), "etag": None, "max_age": None,
            "fetched_at": fetched_at}  # fmt: skip


# -- no message in the caller's session ---------------------------------------------


def test_explain_logs_nothing_and_shows_warnings_as_rows(
    plpy: SessionPlpy, token: str
) -> None:
    plpy.rules.append(rule_row(9, "(unclosed", "x"))
    adapter = Adapter(plpy)
    rows = adapter.explain(token, "alice", "app")
    assert (plpy.logs, plpy.warnings) == ([], [])
    notes = [r for r in rows if r["name"] == "note"]
    assert len(notes) == 1 and "rule id 9" in notes[0]["detail"]
    assert notes[0]["outcome"] == "info"
    assert [r["name"] for r in rows][-3:] == ["role", "note", "decision"]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    # the workers' path (a worker's own adapter) still logs
    Adapter(plpy).validate(token, "alice", "app", None, True, None)
    assert any("rule id 9" in w for w in plpy.warnings)
    assert plpy.logs or plpy.config_logs or plpy.debug


def test_explain_refuses_a_token_written_into_the_statement(
    plpy: SessionPlpy, token: str
) -> None:
    header, payload, signature = token.split(".")
    for statement in (f"SELECT * FROM oauth.explain('{token}', 'alice')",
                      f"SELECT oauth.explain('x.y.' || '{signature}', 'alice')",
                      f"select * from oauth.explain(E'{header}.{payload}.z', 'alice')"):  # fmt: skip
        plpy.statement = statement
        plpy.executed.clear()
        assert Adapter(plpy).explain(token, "alice", "app") == statement_refusal_rows()
        assert ISSUERS_QUERY not in plpy.executed
    assert statement_refusal_rows()[-1]["detail"].startswith("token_in_statement: ")
    plpy.statement = "SELECT * FROM oauth.explain($1, 'alice')"
    assert Adapter(plpy).explain(token, "alice", "app")[-1]["outcome"] == "pass"
    assert (plpy.logs, plpy.warnings) == ([], [])

    # checked before the configuration database: a literal is refused anywhere
    plpy.config_database = False
    plpy.statement = f"SELECT * FROM oauth.explain('{token}', 'alice')"
    assert Adapter(plpy).explain(token, "alice", "app") == statement_refusal_rows()
    plpy.statement = "SELECT * FROM oauth.explain($1, 'alice')"
    with pytest.raises(FakeSpiError, match='lives in database "cfg"'):
        Adapter(plpy).explain(token, "alice", "app")
    plpy.config_database = True

    # a statement that cannot be read does not stop the dry run
    original = plpy.execute

    def execute(plan: FakePlan, args: list[Any] | None = None) -> Any:
        if plan.query == CURRENT_QUERY_QUERY:
            raise FakeSpiError("permission denied")
        return original(plan, args)

    plpy.execute = execute  # type: ignore[method-assign]
    assert Adapter(plpy).explain(token, "alice", "app")[-1]["outcome"] == "pass"


def test_short_strings_are_not_taken_for_a_token() -> None:
    assert not written_into("a.b.c", "SELECT * FROM oauth.explain('a.b.c', 'alice')")
    assert not written_into("x" * 40, "x" * 80)  # no payload, no signature
    assert not written_into("a.b.c", None)
    assert written_into(b"h." + b"p" * 16 + b".s", "'" + "p" * 16 + "'")


# -- the workers' keys ------------------------------------------------------------


def test_explain_decides_with_the_stored_document(dev: DevIssuer, tmp_path: Path) -> None:
    """Neither fresher than what the workers stored (no refetch for an unknown kid)
    nor staler (nothing kept from an earlier call)."""
    plpy = session(remote_plpy(dev))
    newer = DevIssuer(str(tmp_path))
    new_kid = newer.rotate("ES256")
    while any(k["kid"] == new_kid for k in dev.jwks()["keys"]):
        new_kid = newer.rotate("ES256")
    docs = Documents({JWKS_URL: newer.jwks()})
    adapter = remote_adapter(plpy, docs)
    plpy.jwks_cache = [stored_row(dev.jwks(), time.time() - 60)]
    old = dev.mint({"iss": ISS}, aud=AUD, sub="alice")
    fresh = newer.mint({"iss": ISS}, aud=AUD, sub="alice", kid=new_kid)

    rows = adapter.explain(fresh, "alice", "app")
    assert rows[-1]["detail"].startswith("unknown_key: ")
    key = next(r for r in rows if r["name"] == "key")
    assert "from oauth.jwks_cache" in key["input"] and "not refetched here" in key["detail"]
    assert docs.requests == []
    assert adapter.explain(old, "alice", "app")[-1]["outcome"] == "pass"

    # nothing stored: it fetches, as a worker without keys would, and stores it
    plpy.jwks_cache = []
    assert adapter.explain(fresh, "alice", "app")[-1]["outcome"] == "pass"
    assert docs.requests == [JWKS_URL] and new_kid in plpy.jwks_cache[0]["jwks"]
    # the workers' document goes back to the older one: so does explain
    plpy.jwks_cache = [stored_row(dev.jwks(), time.time() + 60)]
    assert adapter.explain(fresh, "alice", "app")[-1]["detail"].startswith("unknown_key")
    assert docs.requests == [JWKS_URL]
    assert (plpy.logs, plpy.warnings) == ([], [])


def test_persisted_documents_are_read_through_the_refresh_filter() -> None:
    assert "oauth._keys_dropped_at(issuer)" in JWKS_CACHE_QUERY


# -- oauth._refresh_keys_now in a worker ---------------------------------------------


def test_refresh_keys_now_drops_and_fetches_again(dev: DevIssuer) -> None:
    plpy = session(remote_plpy(dev))
    docs = Documents({JWKS_URL: dev.jwks()})
    adapter = remote_adapter(plpy, docs)
    adapter.warmup()
    kid = dev.current_kid("RS256")
    old = dev.mint({"iss": ISS}, aud=AUD, sub="alice", kid=kid)
    assert adapter.validate(old, "alice", "app", None, True, None)["ok"]

    # the issuer withdraws the key; the document stored before the call stays hidden
    kept = [k for k in dev.jwks()["keys"] if k["kid"] != kid]
    docs.documents[JWKS_URL] = {"keys": kept}
    plpy.dropped_at = time.time()
    # another issuer's refresh leaves this one alone
    assert adapter.refresh_keys_now(["https://other.example"]) == "0 issuers, 0 keys"
    assert adapter.validate(old, "alice", "app", None, True, None)["ok"]
    assert adapter.refresh_keys_now(None) == f"1 issuers, {len(kept)} keys"
    assert docs.requests.count(JWKS_URL) == 2
    row = adapter.validate(old, "alice", "app", None, True, None)
    assert row["reason"] == "unknown_key"
    assert kid not in plpy.jwks_cache[0]["jwks"]


def test_refresh_keys_now_without_the_issuer_holds_no_keys(dev: DevIssuer) -> None:
    plpy = session(remote_plpy(dev))
    docs = Documents({JWKS_URL: dev.jwks()})
    adapter = remote_adapter(plpy, docs)
    adapter.warmup()
    del docs.documents[JWKS_URL]
    plpy.dropped_at = time.time()
    assert adapter.refresh_keys_now([ISS]) == "1 issuers, 0 keys, 1 issuers without keys"
    assert any("keys of issuer" in w for w in plpy.warnings)
    old = dev.mint({"iss": ISS}, aud=AUD, sub="alice")
    assert adapter.validate(old, "alice", "app", None, True, None)["reason"] == (
        "jwks_unavailable"
    )


def test_refresh_keys_now_never_raises(dev: DevIssuer) -> None:
    plpy = remote_plpy(dev)
    adapter = remote_adapter(plpy, Documents({JWKS_URL: dev.jwks()}))
    adapter.warmup()
    plpy.fail_with = RuntimeError("no table")
    assert "unavailable" in adapter.refresh_keys_now(None)
    assert adapter.keys.keys(ISS) == []  # dropped all the same


def test_key_store_forget_and_held_keys_only(dev: DevIssuer, tmp_path: Path) -> None:
    docs = Documents({JWKS_URL: dev.jwks()})
    store = KeyStore(fetch=docs)
    config = Config.from_rows([issuer_row(jwks_uri=JWKS_URL, jwks_cooldown=0.0)], [], 1, [])
    issuer = config.issuers[ISS]
    store.refresh(issuer)
    assert store.keys(ISS)
    store.forget(ISS)
    assert store.keys(ISS) == []
    store.refresh(issuer)
    store.forget()
    assert store.keys(ISS) == []

    held = store.sibling(held_keys_only=True)
    assert held.keys(ISS) == [] and held.sibling().held_keys_only is False
    held.refresh(issuer)
    requests = len(docs.requests)
    kid = dev.current_kid("RS256")
    held.get_key(issuer, "RS256", kid)
    with pytest.raises(UnknownKey, match="not refetched here"):
        held.get_key(issuer, "RS256", "no-such-kid")
    assert len(docs.requests) == requests
    # an empty held store fetches like any other
    empty = KeyStore(fetch=docs, held_keys_only=True)
    empty.get_key(issuer, "RS256", kid)
    assert len(docs.requests) == requests + 1


# -- pg-oauth explain --dsn: the token as a parameter, logging off -------------------


class FakeCursor:
    def __init__(self, rows: list[tuple]) -> None:
        self.rows = rows

    def fetchall(self) -> list[tuple]:
        return self.rows


class FakeConnection:
    def __init__(self, exists: set[str]) -> None:
        self.exists = exists
        self.executed: list[tuple[str, Any]] = []

    def execute(self, query: str, params: Any = None) -> FakeCursor:
        self.executed.append((query, params))
        names, _values = params
        return FakeCursor([(n,) for n in names if n in self.exists])


def test_quiet_transaction_turns_off_what_could_log_the_token() -> None:
    names = {n for n, _ in QUIET_SETTINGS}
    assert {"log_statement", "log_min_duration_statement", "log_parameter_max_length",
            "log_parameter_max_length_on_error", "log_min_error_statement",
            "debug_print_plan", "debug_print_parse", "debug_print_rewritten"} <= names  # fmt: skip
    values = dict(QUIET_SETTINGS + OPTIONAL_QUIET_SETTINGS)
    assert values["log_statement"] == "none" and values["log_min_error_statement"] == "panic"
    assert values["auto_explain.log_min_duration"] == "-1"
    conn = FakeConnection(names | {"auto_explain.log_min_duration"})
    changed = quiet_transaction(conn)
    assert "auto_explain.log_min_duration" in changed and "pgaudit.log_parameter" not in changed
    with pytest.raises(ServerExplainError, match="log_statement"):
        quiet_transaction(FakeConnection(names - {"log_statement"}))


def test_security_doc_names_every_setting_it_turns_off() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    missing = [n for n, _ in QUIET_SETTINGS + OPTIONAL_QUIET_SETTINGS if n not in text]
    assert not missing


def test_dsn_asks_the_server_unless_told_to_decide_here(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyhook import cli

    calls: list[tuple] = []

    def on_server(*args: Any) -> list[dict[str, Any]]:
        calls.append(args)
        return [{"step": 1, "name": "role", "outcome": "pass", "input": "role 'alice'",
                 "detail": "role exists and may log in"},
                {"step": 2, "name": "decision", "outcome": "pass",
                 "input": "allowed roles: alice", "detail": "ok: role 'alice' allowed"}]  # fmt: skip

    def offline(dsn: str) -> Any:
        raise cli.ConfigFileError("read offline")

    monkeypatch.setattr(cli, "explain_on_server", on_server)
    monkeypatch.setattr(cli, "config_from_database", offline)
    token_file = tmp_path / "token"
    token_file.write_text("h.p.s\n")
    args = ["--dsn", "dbname=postgres", "--token-file", str(token_file), "--role", "alice"]
    assert cli.check(args) == cli.EXIT_ALLOWED
    assert capsys.readouterr().out.strip() == "ok: role 'alice' allowed"
    assert calls == [("dbname=postgres", "h.p.s", "alice", "postgres", None)]
    assert cli.explain([*args, "--database", "app", "--client-addr", "10.0.0.1"]) == 0
    assert calls[-1] == ("dbname=postgres", "h.p.s", "alice", "app", "10.0.0.1")
    for extra in (["--no-fetch"], ["--now", "1700000000"]):
        assert cli.check([*args, *extra]) == cli.EXIT_ERROR
        assert "read offline" in capsys.readouterr().err
    assert len(calls) == 2
