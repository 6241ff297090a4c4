"""pg_oauth behind real connection poolers (issue 21): Debian's PgBouncer and pgpool-II, run
as the unprivileged server user in front of a throwaway cluster (tests/poolers.py).

- The per-transaction form, set up exactly as docs/poolers.md says (its marked blocks are
  read and run here: pg_hba.conf line, the DBA's SQL, the user list, pgbouncer.ini), through
  PgBouncer in transaction mode: 40 clients with 40 subjects over 4 server connections.
- Where each pooler stops: the token sent as the password through session pooling
  (PgBouncer with auth_type = pam, pgpool-II), and pgpool-II with the per-transaction form.
"""

from __future__ import annotations

import configparser
import random
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import (
    AUDIENCE,
    CLUSTERS,
    MINTED,
    RecordingIssuer,
    setup_oauth,
    token_leaks,
    until,
)
from pgcluster import ADMIN_PASSWORD, ADMIN_USER, DEFAULT_HBA, PG_BIN, Cluster
from poolers import PgBouncer, Pgpool, binary, mount_namespaces_work, version

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "poolers.md"
GATEWAY_PASSWORD = "gateway-pooler-secret"
APPDB = "appdb"
# pgbouncer.ini keys that name this machine: the test's own values replace the guide's
SITE_KEYS = {"listen_addr", "listen_port", "auth_file", "client_tls_cert_file",
             "client_tls_key_file", "logfile", "pidfile", "unix_socket_dir"}

PGBOUNCER = binary("pgbouncer")
PGPOOL = binary("pgpool")
needs_pgbouncer = pytest.mark.skipif(
    PGBOUNCER is None, reason="PgBouncer is not installed (Debian package pgbouncer; "
    "make test-deps installs it)")
needs_pgpool = pytest.mark.skipif(
    PGPOOL is None, reason="pgpool-II is not installed (Debian package pgpool2; "
    "make test-deps installs it)")
# PgBouncer reads its PAM service from /etc/pam.d/pgbouncer: the tests give it one of its
# own in a mount namespace instead of writing to the host's /etc/pam.d
PAM_PERMIT = "auth required pam_permit.so\naccount required pam_permit.so\n"


def guide_blocks() -> dict[str, str]:
    """The blocks of docs/poolers.md marked <!-- poolers: NAME -->."""
    text = GUIDE.read_text(encoding="utf-8")
    return dict(re.findall(r"<!-- poolers: (\S+) -->\n```[a-z]*\n(.*?)```", text, re.DOTALL))


def psql(cluster: Cluster, dbname: str, script: str, **variables: str) -> str:
    """The script as the guide's DBA runs it: psql as a superuser, variables with -v."""
    dsn = (f"host=127.0.0.1 port={cluster.port} dbname={dbname} user={ADMIN_USER} "
           "sslmode=disable")
    args = [str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", dsn]
    for name, value in variables.items():
        args += ["-v", f"{name}={value}"]
    proc = subprocess.run(args, input=script, capture_output=True, text=True, check=False,
                          env={"PGPASSWORD": ADMIN_PASSWORD, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def reason(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    detail = (diag.message_detail if diag else None) or str(exc)
    assert "reason=" in detail, str(exc)
    return detail.split("reason=", 1)[1].split(":", 1)[0].strip()


def audited(cluster: Cluster, subject: str) -> list[tuple]:
    """(kind, outcome, reason) of every attempt of subject pg_oauth has audited."""
    return cluster.sql("SELECT kind, outcome, reason FROM oauth.audit_log WHERE subject = %s "
                       "ORDER BY at", (subject,))


def token_of_length(issuer: RecordingIssuer, length: int, sub: str) -> str:
    """A token of exactly length characters for sub, padded with a claim (and, for the
    lengths base64url cannot reach by the payload alone, a header member)."""
    raw = issuer._issuer  # probes are never sent anywhere: not recorded
    for header_pad in range(4):
        headers = {"pad": "h" * header_pad} if header_pad else None
        base = len(raw.mint({"sub": sub, "pad": ""}, aud=AUDIENCE, headers=headers))
        first = max(0, (length - base) * 3 // 4 - 4)
        for pad in range(first, first + 8):
            probe = raw.mint({"sub": sub, "pad": "p" * pad}, aud=AUDIENCE, headers=headers)
            if len(probe) == length:
                token = issuer.mint({"sub": sub, "pad": "p" * pad}, headers=headers)
                assert len(token) == length
                return token
    raise AssertionError(f"no token of {length} characters")


# -- the cluster, set up as docs/poolers.md says ------------------------------------------

@pytest.fixture(scope="module")
def guide() -> dict[str, str]:
    blocks = guide_blocks()
    missing = {"pg_hba.conf", "config.sql", "app.sql", "userlist.sql", "pgbouncer.ini"} - set(blocks)
    assert not missing, f"docs/poolers.md lacks the blocks {missing}"
    return blocks


@pytest.fixture(scope="module")
def pooled(issuer: RecordingIssuer, guide: dict[str, str]) -> Iterator[Cluster]:
    """The guide's pg_hba.conf line above the token lines, its SQL in both databases; then
    what only the tests need: a privileged role a token may name, and no clock leeway."""
    hba = DEFAULT_HBA.replace("# token logins", guide["pg_hba.conf"] + "# token logins")
    cluster = Cluster(settings={"pg_oauth.rate_limit_failures": 0}, hba=hba).init().start()
    CLUSTERS.append(cluster)
    setup_oauth(cluster, issuer.issuer)
    cluster.sql(f"CREATE DATABASE {APPDB}")
    psql(cluster, "postgres", guide["config.sql"], issuer=issuer.issuer,
         gateway_password=GATEWAY_PASSWORD)
    psql(cluster, APPDB, guide["app.sql"])
    cluster.sql("CREATE ROLE admin_app LOGIN CREATEROLE BYPASSRLS")
    cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                "VALUES (%s, 'sub', 'boss', 'admin_app')", (issuer.issuer,))
    cluster.sql("UPDATE oauth.issuers SET leeway = '0' WHERE issuer = %s", (issuer.issuer,))
    cluster.wait_for_workers()
    yield cluster
    cluster.stop()


def guide_pgbouncer(cluster: Cluster, guide: dict[str, str], **changes: str) -> PgBouncer:
    """PgBouncer with the guide's pgbouncer.ini (this machine's paths and ports aside; and
    changes) and the user list its SQL makes."""
    ini = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    ini.read_string(guide["pgbouncer.ini"])
    assert list(ini["databases"]) == [APPDB], "the guide's database is the application's"
    assert re.fullmatch(r"host=\S+ port=\d+ dbname=" + APPDB, ini["databases"][APPDB])
    settings = {k: v for k, v in ini["pgbouncer"].items() if k not in SITE_KEYS}
    assert set(ini["pgbouncer"]) & SITE_KEYS, "the guide names where PgBouncer listens"
    userlist = psql(cluster, "postgres", guide["userlist.sql"])
    assert userlist.startswith('"gateway" "SCRAM-SHA-256$'), userlist
    return PgBouncer(cluster, {**settings, **changes}, userlist=userlist, databases=[APPDB])


@pytest.fixture(scope="module")
def bouncer(pooled: Cluster, guide: dict[str, str]) -> Iterator[PgBouncer]:
    with guide_pgbouncer(pooled, guide) as pgbouncer:
        yield pgbouncer
        leaks = token_leaks(MINTED, {"pgbouncer": pgbouncer.log()})
        assert not leaks, leaks


def client(bouncer: PgBouncer, **kw) -> psycopg.Connection:
    """A client of the pooler as the guide's client code makes one: the gateway's password,
    TLS to PgBouncer, no named prepared statements (transaction pooling)."""
    return psycopg.connect(bouncer.dsn("gateway", APPDB), password=GATEWAY_PASSWORD,
                           prepare_threshold=None, **kw)


def authenticated_count(conn: psycopg.Connection, token: str) -> int:
    with conn.transaction():
        conn.execute("SELECT oauth.authenticate(%s)", (token,))
        return conn.execute("SELECT count(*) FROM notes").fetchone()[0]


# -- the per-transaction form through PgBouncer ----------------------------------------

CLIENTS = 40
TRANSACTIONS = 75  # each: 3000 in all
POOL_SIZE = 4


@needs_pgbouncer
def test_forty_subjects_share_four_server_connections_and_each_sees_only_its_own_rows(
        pooled, bouncer, issuer):
    assert bouncer.settings["pool_mode"] == "transaction"
    assert int(bouncer.settings["default_pool_size"]) == POOL_SIZE
    subjects = [f"user-pool-{i:02d}" for i in range(CLIENTS)]
    tokens = {sub: issuer.mint({"sub": sub}) for sub in subjects}
    written = dict.fromkeys(subjects, 0)
    backends: set[int] = set()
    failures: list[str] = []
    start = threading.Barrier(CLIENTS + 1)
    log_before = len(pooled.log_text())

    def run(i: int, sub: str) -> None:
        rng = random.Random(i)
        try:
            # application_name differs per client: PgBouncer SETs it on every server
            # connection it hands over, before the transaction's own statements
            with client(bouncer, application_name=f"pooled-client-{i}") as conn:
                start.wait()
                for n in range(TRANSACTIONS):
                    rolled_back = False
                    with conn.transaction():
                        role = conn.execute("SELECT oauth.authenticate(%s)",
                                            (tokens[sub],)).fetchone()[0]
                        me, claim, pid = conn.execute(
                            "SELECT current_user, oauth.claim('sub'), pg_backend_pid()"
                        ).fetchone()
                        assert (role, me, claim) == ("app", "app", sub), (role, me, claim)
                        backends.add(pid)
                        if n % 3 == 2:
                            rows = conn.execute("SELECT owner FROM notes").fetchall()
                            assert len(rows) == written[sub], (sub, len(rows), written[sub])
                            assert {owner for (owner,) in rows} <= {sub}, rows
                            touched = conn.execute(
                                "UPDATE notes SET body = body RETURNING owner").fetchall()
                            assert len(touched) == written[sub], (sub, touched)
                            continue
                        owner = conn.execute(
                            "INSERT INTO notes (body) VALUES (%s) RETURNING owner",
                            (f"note {n} of {sub}",)).fetchone()[0]
                        assert owner == sub
                        if rng.random() < 0.1:  # a rolled back write counts for nobody
                            rolled_back = True
                            raise psycopg.Rollback()
                    if n % 3 != 2 and not rolled_back:
                        written[sub] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below, with its client
            failures.append(f"{sub}: {type(exc).__name__}: {exc}")
            start.abort()

    threads = [threading.Thread(target=run, args=(i, sub)) for i, sub in enumerate(subjects)]
    for t in threads:
        t.start()
    seen: set[int] = set()  # the gateway's backends, as the server lists them meanwhile
    with pooled.admin(APPDB) as watch:
        try:
            start.wait(timeout=60)
        except threading.BrokenBarrierError:
            pass  # a client failed: reported below
        while any(t.is_alive() for t in threads):
            seen.update(pid for (pid,) in watch.execute(
                "SELECT pid FROM pg_stat_activity WHERE usename = 'gateway'").fetchall())
            time.sleep(0.05)
    for t in threads:
        t.join()
    assert not failures, failures[:5]

    writes = CLIENTS * (TRANSACTIONS - TRANSACTIONS // 3)
    assert 0 < writes - sum(written.values()) < writes // 4  # some rolled back
    # every committed row is its writer's, and no other
    assert dict(pooled.sql("SELECT owner, count(*) FROM notes WHERE owner LIKE 'user-pool-%%' "
                           "GROUP BY owner", dbname=APPDB)) == written
    # 40 clients, never more than 4 server connections, all opened by PgBouncer once
    assert 1 <= len(backends | seen) <= POOL_SIZE, (backends, seen)
    opened = pooled.log_text()[log_before:].count(
        f"connection authorized: user=gateway database={APPDB}")
    assert opened <= POOL_SIZE, opened


@needs_pgbouncer
def test_a_revoked_subject_is_refused_at_its_next_transaction(pooled, bouncer, issuer):
    tok, other = issuer.mint({"sub": "user-revoked-later"}), issuer.mint({"sub": "user-stays"})
    with client(bouncer) as conn:
        authenticated_count(conn, tok)
        pooled.sql("SELECT oauth.revoke(subject => 'user-revoked-later', reason => 'test')")
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as excinfo:
            authenticated_count(conn, tok)
        assert reason(excinfo.value) == "revoked"
        # the client's connection, and the pooled server connection, go on for others
        assert authenticated_count(conn, other) == 0


@needs_pgbouncer
def test_an_expired_token_is_refused_at_its_next_transaction(pooled, bouncer, issuer):
    tok = issuer.mint({"sub": "user-expiring"}, lifetime=3)
    expires = time.time() + 3
    with client(bouncer) as conn:
        authenticated_count(conn, tok)  # admitted, and in the decision cache
        time.sleep(max(0.0, expires - time.time()) + 1.1)
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as excinfo:
            authenticated_count(conn, tok)
        assert reason(excinfo.value) == "expired"


@needs_pgbouncer
def test_a_token_for_a_privileged_role_is_refused(pooled, bouncer, issuer):
    with client(bouncer) as conn:
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as excinfo:
            authenticated_count(conn, issuer.mint({"sub": "boss"}))
        assert reason(excinfo.value) == "privilege_forbidden"
        assert authenticated_count(conn, issuer.mint({"sub": "user-after-boss"})) == 0


@needs_pgbouncer
def test_the_gateways_password_alone_reads_nothing_through_pgbouncer(pooled, bouncer):
    with client(bouncer, autocommit=True) as conn:
        for statement in ("SELECT count(*) FROM notes", "SELECT oauth.claim('sub')",
                          "SET ROLE app"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="before oauth.authenticate"):
                conn.execute(statement)
        assert conn.execute("SELECT 1").fetchone() == (1,)


@needs_pgbouncer
def test_a_token_too_large_for_any_poolers_password_passes_as_a_bind_parameter(
        pooled, bouncer, issuer):
    tok = token_of_length(issuer, 12000, "user-large-token")
    with client(bouncer) as conn, conn.transaction():
        assert conn.execute("SELECT oauth.authenticate(%s)", (tok,)).fetchone() == ("app",)
        assert conn.execute("SELECT oauth.claim('sub')").fetchone() == ("user-large-token",)


@needs_pgbouncer
def test_pgbouncer_prepared_statements_do_not_outlive_an_authenticated_transaction(
        pooled, guide, issuer):
    """PgBouncer 1.21+ prepares a client's named statement once per server connection
    (max_prepared_statements) and reuses it there; the end of every authenticated
    transaction drops it, unknown to PgBouncer: the guide's clients bind unnamed."""
    if version(PGBOUNCER) < (1, 21):
        pytest.skip("PgBouncer before 1.21 keeps no prepared statements in transaction "
                    "pooling (max_prepared_statements)")
    tok = issuer.mint({"sub": "user-prepared"})
    with (guide_pgbouncer(pooled, guide, max_prepared_statements="100",
                          default_pool_size="1") as bouncer,
          psycopg.connect(bouncer.dsn("gateway", APPDB), password=GATEWAY_PASSWORD) as conn):
        with conn.transaction():
            conn.execute("SELECT oauth.authenticate(%s)", (tok,))
            conn.execute("SELECT count(*) FROM notes WHERE body <> %s", ("x",), prepare=True)
        with pytest.raises(psycopg.errors.InvalidSqlStatementName), conn.transaction():
            conn.execute("SELECT oauth.authenticate(%s)", (tok,))
            conn.execute("SELECT count(*) FROM notes WHERE body <> %s", ("x",), prepare=True)


# -- the token as the password: PgBouncer in session mode -------------------------------

def pam_bouncer(cluster: Cluster, **settings: str) -> PgBouncer:
    """PgBouncer in session mode passing the client's cleartext password on: auth_type =
    pam, whose service here admits any password (what PgBouncer does with it is the point)."""
    why = mount_namespaces_work()
    if why is not None:
        pytest.skip(f"PgBouncer's PAM service needs a mount namespace here: {why}")
    return PgBouncer(cluster, {"auth_type": "pam", "pool_mode": "session",
                               "server_login_retry": "1", **settings},
                     databases=[APPDB], pam_service=PAM_PERMIT)


def session_of(bouncer: PgBouncer, password: str) -> tuple:
    with psycopg.connect(bouncer.dsn("app", APPDB), password=password,
                         autocommit=True) as conn:
        return conn.execute("SELECT oauth.claim('sub'), pg_backend_pid()").fetchone()


@needs_pgbouncer
def test_pgbouncer_hands_the_first_tokens_session_to_whoever_logs_in_next(pooled, issuer):
    with pam_bouncer(pooled, default_pool_size="1") as bouncer:
        sub_a, pid = session_of(bouncer, issuer.mint({"sub": "user-pam-a"}))
        assert sub_a == "user-pam-a"
        # another subject's token, then no token at all: the pooled server connection
        # opened with the first token, its claims, and not a word to pg_oauth
        assert session_of(bouncer, issuer.mint({"sub": "user-pam-b"})) == ("user-pam-a", pid)
        assert session_of(bouncer, "not-a-token") == ("user-pam-a", pid)
    assert audited(pooled, "user-pam-b") == []


@needs_pgbouncer
def test_pgbouncer_opens_server_connections_with_the_latest_password_of_the_role(
        pooled, issuer):
    # one server connection, used once: every client needs a new one
    with pam_bouncer(pooled, default_pool_size="1", server_lifetime="0",
                     admin_users="pgbouncer_admin") as bouncer:
        holder = psycopg.connect(bouncer.dsn("app", APPDB), autocommit=True,
                                 password=issuer.mint({"sub": "user-holder"}))
        assert holder.execute("SELECT oauth.claim('sub')").fetchone() == ("user-holder",)
        waiting = psycopg.connect(bouncer.dsn("app", APPDB), autocommit=True,
                                  password=issuer.mint({"sub": "user-first"}))
        answer: list = []
        asking = threading.Thread(target=lambda: answer.append(
            waiting.execute("SELECT oauth.claim('sub')").fetchone()))
        asking.start()
        # the admin console speaks the simple query protocol only
        with psycopg.connect(bouncer.dsn("pgbouncer_admin", "pgbouncer"), password="any",
                             autocommit=True, cursor_factory=psycopg.ClientCursor) as admin:
            def clients_waiting() -> bool:
                cur = admin.execute("SHOW CLIENTS")
                state = [column.name for column in cur.description].index("state")
                return any(row[state] == "waiting" for row in cur.fetchall())

            until(clients_waiting, what="a client waiting for a server connection")
            # a second client of the role logs in: its token is now the role's password
            later = psycopg.connect(bouncer.dsn("app", APPDB), autocommit=True,
                                    password=issuer.mint({"sub": "user-later"}))
            holder.close()
            asking.join(timeout=30)
        later.close()
        waiting.close()
    # the waiting client runs with the later client's token, never checked for it
    assert answer == [("user-later",)]
    assert audited(pooled, "user-first") == []


@needs_pgbouncer
def test_pgbouncer_passes_on_passwords_up_to_its_limit(pooled, issuer):
    limit = 2047 if version(PGBOUNCER) < (1, 26) else 65530  # MAX_PASSWORD, less its NUL
    with pam_bouncer(pooled) as bouncer:
        fits = token_of_length(issuer, min(limit, 12000), "user-pam-long")
        assert session_of(bouncer, fits)[0] == "user-pam-long"
    if limit >= 12000:
        return
    # a longer one is cut to fit, and PgBouncer logs in with what is left
    with pam_bouncer(pooled) as bouncer:
        with pytest.raises(psycopg.OperationalError, match="JWT authentication failed"):
            session_of(bouncer, token_of_length(issuer, limit + 1, "user-pam-too-long"))
        assert "string truncated" in bouncer.log()


# -- pgpool-II ---------------------------------------------------------------------------

@needs_pgpool
def test_pgpool_carries_one_token_per_transaction_on_its_cached_connection(pooled, issuer):
    """pgpool-II asks each new server connection for version() before it forwards the
    client's first statement: a check of its own, which a gateway session runs. Then each
    client's transactions run as its own token, on the one connection pgpool keeps."""
    with Pgpool(pooled, {"num_init_children": "1", "max_pool": "1"},
                pool_passwd=[("gateway", GATEWAY_PASSWORD)]) as pgpool:
        def transaction(sub: str) -> tuple:
            with psycopg.connect(pgpool.dsn("gateway", APPDB), password=GATEWAY_PASSWORD,
                                 prepare_threshold=None) as conn:
                with conn.transaction():
                    conn.execute("SELECT oauth.authenticate(%s)", (issuer.mint({"sub": sub}),))
                    conn.execute("INSERT INTO notes (body) VALUES (%s)", (f"via pgpool: {sub}",))
                    owners = {r[0] for r in conn.execute("SELECT owner FROM notes").fetchall()}
                    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                return owners, pid

        (owners_a, pid_a), (owners_b, pid_b) = transaction("user-pgpool-tx-a"), \
            transaction("user-pgpool-tx-b")
        assert owners_a == {"user-pgpool-tx-a"} and owners_b == {"user-pgpool-tx-b"}
        assert pid_a == pid_b  # the one cached server connection served both clients
        # a statement before authenticate: pgpool-II first asks the server, as the gateway,
        # about the functions it calls; refused, and pgpool-II ends the client's session
        with psycopg.connect(pgpool.dsn("gateway", APPDB), password=GATEWAY_PASSWORD,
                             prepare_threshold=None, autocommit=True) as conn, \
                pytest.raises(psycopg.Error, match="before oauth.authenticate"):
            conn.execute("SELECT count(*) FROM notes")


@needs_pgpool
def test_pgpool_passes_the_token_on_with_its_connection_cache_off(pooled, issuer):
    with Pgpool(pooled, {"connection_cache": "off"}) as pgpool:
        def session(password: str) -> tuple:
            with psycopg.connect(pgpool.dsn("app", APPDB), password=password,
                                 autocommit=True) as conn:
                return conn.execute("SELECT oauth.claim('sub'), pg_backend_pid()").fetchone()

        first, second = session(issuer.mint({"sub": "user-pgpool-a"})), \
            session(issuer.mint({"sub": "user-pgpool-b"}))
        assert (first[0], second[0]) == ("user-pgpool-a", "user-pgpool-b")
        assert first[1] != second[1]  # no server connection is kept: every one its own
        with pytest.raises(psycopg.OperationalError, match="JWT authentication failed"):
            session("not-a-token")
        # MAX_PASSWORD_SIZE (1024) counts the terminating NUL
        assert session(token_of_length(issuer, 1023, "user-pgpool-1023"))[0] == \
            "user-pgpool-1023"
        with pytest.raises(psycopg.OperationalError, match="password is too long"):
            session(token_of_length(issuer, 1024, "user-pgpool-1024"))
    assert audited(pooled, "user-pgpool-1024") == []


@needs_pgpool
def test_pgpool_connection_cache_serves_only_the_token_that_opened_it(pooled, issuer):
    # pgpool caches no connection to the database "postgres": the application's database
    with Pgpool(pooled, {"num_init_children": "1", "max_pool": "1"}) as pgpool:
        def session(password: str) -> tuple:
            with psycopg.connect(pgpool.dsn("app", APPDB), password=password,
                                 autocommit=True) as conn:
                return conn.execute("SELECT oauth.claim('sub'), pg_backend_pid()").fetchone()

        tok = issuer.mint({"sub": "user-cached"})
        first = session(tok)
        assert session(tok) == first  # the same token again: the cached connection
        with pytest.raises(psycopg.OperationalError,
                           match="clear text password authentication failed"):
            session(issuer.mint({"sub": "user-cached-next"}))
    assert audited(pooled, "user-cached-next") == []
