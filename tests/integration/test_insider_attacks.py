"""Attacks from inside: the owner of pg_oauth.database, a token role with
pg_write_all_data, two-phase commit and logins racing oauth.revoke(), long subjects,
check_setup() and unusual trust lines.

Each test is an attack and passes when the defence holds: "HOLDS" marks a defence that
held from the start, "HOLDS (was a finding)" an attack that worked until it was fixed
(the fix named in the docstring or the commit).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import psycopg
import pytest
from conftest import AUDIENCE, CLUSTERS, RecordingIssuer, attempt, make_cluster, until
from pgcluster import DEFAULT_HBA, Cluster

OWNER_PASSWORD = "rev-owner-pw"


# -- helpers ------------------------------------------------------------------------

def seen_within(check, timeout: float = 20.0, interval: float = 0.25):
    """check()'s first truthy value within timeout, else its last (falsy) value: for
    watching that something does NOT happen (conftest's until() raises on timeout)."""
    deadline = time.time() + timeout
    value = None
    while time.time() < deadline:
        try:
            value = check()
        except psycopg.Error:
            value = None
        if value:
            return value
        time.sleep(interval)
    return value


def session_alive(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT 1").fetchone()
        return True
    except psycopg.Error:
        return False


def owner_hba() -> str:
    """The test hba with a password line for the configuration database's owner."""
    marker = "host    all   scram_user"
    return DEFAULT_HBA.replace(
        marker, "host    all   rev_owner 127.0.0.1/32 scram-sha-256\n" + marker, 1)


def as_owner(cluster: Cluster, dbname: str, query: str) -> None:
    dsn = (f"host=127.0.0.1 port={cluster.port} dbname={dbname} user=rev_owner "
           f"password={OWNER_PASSWORD} sslmode=disable")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query)


def owned_cluster(issuer: RecordingIssuer, cfgdb: str, before_extension: str | None = None
                  ) -> tuple[Cluster, str | None]:
    """pg_oauth.database = cfgdb, owned by rev_owner (no superuser).  before_extension:
    SQL rev_owner runs in cfgdb before the DBA creates the extension.  Returns the
    cluster and the error CREATE EXTENSION raised (None: it succeeded)."""
    c = Cluster(settings={"pg_oauth.database": f"'{cfgdb}'",
                          "pg_oauth.rate_limit_failures": 0},
                hba=owner_hba()).init().start()
    CLUSTERS.append(c)
    c.sql(f"CREATE ROLE rev_owner LOGIN PASSWORD '{OWNER_PASSWORD}'; "
          "CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN")
    c.sql(f"CREATE DATABASE {cfgdb} OWNER rev_owner")
    if before_extension:
        as_owner(c, cfgdb, before_extension)
    try:
        c.sql("CREATE EXTENSION pg_oauth CASCADE", dbname=cfgdb)
    except psycopg.Error as exc:
        return c, str(exc)
    c.sql("INSERT INTO oauth.issuers (issuer, audiences, jwks_cooldown, allow_loopback_http) "
          "VALUES (%s, %s, '1 second', true)", (issuer.issuer, [AUDIENCE]), dbname=cfgdb)
    c.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
          "VALUES (%s, 'sub', '(alice|bob)', '\\1')", (issuer.issuer,), dbname=cfgdb)
    until(lambda: attempt(c, "alice", issuer.mint(sub="alice")) == "ok", 30,
          "the first token login", ignore=(psycopg.Error,))
    return c, None


def is_superuser(cluster: Cluster, role: str) -> bool:
    return cluster.sql("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,))[0][0]


# ====================================================================================
# 1. Owner of pg_oauth.database pre-creates schema "oauth"  (FINDING, critical)
# ====================================================================================

@pytest.fixture(scope="module")
def precreated(issuer) -> Iterator[tuple[Cluster, str | None]]:
    c, error = owned_cluster(issuer, "rev_pre", before_extension="CREATE SCHEMA oauth")
    yield c, error
    c.stop()


def test_precreated_schema_is_refused_by_create_extension(precreated):
    """HOLDS (was the context of a critical finding): CREATE EXTENSION used the owner's
    schema silently.  Now the install script refuses a schema it did not create."""
    _c, error = precreated
    assert error is not None and 'schema "oauth" already exists' in error, error


def test_precreated_oauth_schema_does_not_give_its_owner_superuser(precreated, issuer):
    """HOLDS (was a finding).  The non-superuser owner of pg_oauth.database creates schema oauth
    before the DBA runs CREATE EXTENSION pg_oauth (the control file's schema is used
    when it exists).  Owning the schema, it later renames it away and creates a new
    schema oauth holding its own oauth.warmup().  The validator workers call
    "SELECT oauth.warmup()" by name every 5 s (validator_worker.c ready_step /
    idle_refresh) as the bootstrap superuser: the owner's code runs as superuser."""
    c, error = precreated
    # the defence: CREATE EXTENSION refused the owner's schema; the owner still owns
    # schema oauth and tries its warmup() there
    assert error is not None and 'schema "oauth" already exists' in error, error
    as_owner(c, "rev_pre", """
        ALTER SCHEMA oauth RENAME TO oauth_installed;
        CREATE SCHEMA oauth;
        CREATE FUNCTION oauth.warmup() RETURNS text LANGUAGE plpgsql AS $$
        BEGIN
            IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'rev_owner') THEN
                EXECUTE 'ALTER ROLE rev_owner SUPERUSER';
            END IF;
            RETURN 'ready';
        END $$;
    """)
    became = seen_within(lambda: is_superuser(c, "rev_owner"), 20)
    assert not became, "rev_owner became a superuser through the workers' oauth.warmup() call"


# ====================================================================================
# 2. Owner of pg_oauth.database: ALTER DATABASE SET role/session_authorization
#    (FINDING, low: the workers run as a role the owner picks -> no token login works)
# ====================================================================================

@pytest.fixture(scope="module")
def owned(issuer) -> Iterator[Cluster]:
    c, error = owned_cluster(issuer, "rev_cfg")
    assert error is None, error
    yield c
    c.stop()


@pytest.mark.parametrize("setting", ["role", "session_authorization"])
def test_database_role_setting_cannot_change_who_the_workers_are(owned, issuer, setting):
    """HOLDS (was a finding).  worker_settings.c pins search_path, plan_cache_mode, ... at
    PGC_S_SESSION but not role/session_authorization: InitPostgres applies the
    database's "role" (checked only against the worker's superuser session user) and
    the workers then run as rev_owner; EXECUTE on oauth.warmup/validate is revoked
    from PUBLIC, so after the next restart every token login is refused."""
    as_owner(owned, "rev_cfg", f"ALTER DATABASE rev_cfg SET {setting} = 'rev_owner'")
    try:
        owned.restart()
        until(lambda: attempt(owned, "alice", issuer.mint(sub="alice")) == "ok", 20,
              f"a token login after ALTER DATABASE ... SET {setting}", ignore=(psycopg.Error,))
    finally:
        owned.sql("ALTER DATABASE rev_cfg RESET ALL")
        owned.restart()
        until(lambda: attempt(owned, "alice", issuer.mint(sub="alice")) == "ok", 30,
              "a token login after RESET ALL", ignore=(psycopg.Error,))


# ====================================================================================
# 3. Revocation committed through two-phase commit  (FINDING, medium)
# ====================================================================================

@pytest.fixture(scope="module")
def twopc(issuer) -> Iterator[Cluster]:
    c = make_cluster(issuer, max_prepared_transactions=4)
    yield c
    c.stop()


def test_revocation_cannot_be_committed_by_commit_prepared(twopc, issuer):
    """HOLDS (was a finding): a change PREPAREd in one session and COMMIT PREPARED in
    another never moved the configuration version, so the decision cache and the
    workers kept the old configuration.  PREPARE TRANSACTION of a configuration change
    is now refused; nothing half-applied is left behind."""
    cached = issuer.mint(sub="alice", jti="rev-2pc-cached")
    assert attempt(twopc, "alice", cached) == "ok"          # now in the decision cache
    with twopc.admin() as c1:
        c1.execute("BEGIN")
        c1.execute("INSERT INTO oauth.revocations (token_id) VALUES ('rev-2pc-cached')")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="two-phase"):
            c1.execute("PREPARE TRANSACTION 'rev-2pc'")
    assert twopc.sql("SELECT count(*) FROM pg_prepared_xacts") == [(0,)]
    assert twopc.sql("SELECT count(*) FROM oauth.revocations") == [(0,)]
    # an ordinary commit of the same change takes effect at once
    twopc.sql("INSERT INTO oauth.revocations (token_id) VALUES ('rev-2pc-cached')")
    assert attempt(twopc, "alice", cached) == "revoked"


# ====================================================================================
# 4. oauth.revoke() and a login racing it  (FINDING, medium)
# ====================================================================================

def test_revoke_ends_a_session_that_logged_in_before_the_revocation_committed(
        cluster, issuer):
    """HOLDS (was a finding).  oauth.revoke() ended the live sessions it covers inside
    its own transaction, before the revocation is committed and visible to the workers.
    A login that passes validation in between (here: while the DBA's transaction is
    open; in autocommit the window is shorter but the same) enters the session registry
    afterwards and is never ended, though its token is revoked."""
    token = issuer.mint(sub="alice", jti="rev-race-1")
    admin = cluster.admin()
    sess = None
    try:
        admin.execute("BEGIN")
        assert admin.execute("SELECT oauth.revoke(token_id => 'rev-race-1')").fetchone() == (0,)
        sess = cluster.token_connect("alice", token)      # validated: not revoked yet
        admin.execute("COMMIT")
        assert attempt(cluster, "alice", token) == "revoked"  # new logins: refused
        time.sleep(3)
        live = cluster.sql("SELECT state FROM oauth.sessions WHERE token_id = 'rev-race-1'")
        assert not session_alive(sess), f"revoked token's session lives on: {live}"
    finally:
        admin.close()
        if sess is not None:
            sess.close()


def test_revoke_in_autocommit_ends_every_session_of_the_token(cluster, issuer):
    """HOLDS (was a finding; same cause, no explicit transaction): logins racing an autocommit
    oauth.revoke().  Four clients keep logging in with tokens of one jti (each one new,
    so each goes through a worker); the sessions that complete while oauth.revoke()
    runs are checked 2 s later.  Any survivor is a revoked token's live session."""
    import threading
    import uuid

    survivors: list[str] = []
    for rnd in range(10):
        jti = f"rev-ac-{rnd}-{uuid.uuid4().hex[:8]}"
        started, done = threading.Event(), threading.Event()
        kept: list[psycopg.Connection] = []
        lock = threading.Lock()

        def loop(done=done, started=started, kept=kept, lock=lock, jti=jti) -> None:
            n = 0
            while not done.is_set():
                n += 1
                token = issuer.mint(sub="alice", jti=jti, n=f"{threading.get_ident()}-{n}")
                try:
                    conn = cluster.token_connect("alice", token)
                except psycopg.OperationalError:
                    continue
                if started.is_set():
                    with lock:
                        kept.append(conn)
                else:
                    conn.close()

        threads = [threading.Thread(target=loop) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        started.set()
        cluster.sql("SELECT oauth.revoke(token_id => %s)", (jti,))
        time.sleep(0.2)
        done.set()
        for t in threads:
            t.join()
        time.sleep(2)
        alive = [c for c in kept if session_alive(c)]
        if alive:
            survivors.append(f"round {rnd}: {len(alive)} of {len(kept)} sessions of "
                             f"revoked jti {jti} still live")
        for c in kept:
            c.close()
        if survivors:
            break
    assert not survivors, survivors


# ====================================================================================
# 5. Long subjects: oauth.revoke(subject => ...) ends nothing  (FINDING, low)
# ====================================================================================

def test_revoke_by_subject_ends_a_session_whose_subject_is_long(cluster, issuer):
    """HOLDS (was a finding).  session_registry_enter() kept issuer/subject/token id cut
    to 255 bytes; _end_sessions compared them with strcmp against the full value, so a
    revocation of a subject of 256+ bytes ended none of its live sessions.  Identities
    are now compared by their SHA-256 (identity_store.c; test_long_identities.py)."""
    subject = "rev-long-" + "x" * 300
    cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                "SELECT issuer, 'sub', 'rev-long-x+', 'carol' FROM oauth.issuers")
    sess = None
    try:
        sess = cluster.token_connect("carol", issuer.mint(sub=subject))
        ended = cluster.sql("SELECT oauth.revoke(subject => %s)", (subject,))[0][0]
        time.sleep(1)
        assert attempt(cluster, "carol", issuer.mint(sub=subject)) == "revoked"
        assert (ended, session_alive(sess)) == (1, False)
    finally:
        if sess is not None:
            sess.close()
        cluster.sql("DELETE FROM oauth.role_map WHERE pattern = 'rev-long-x+'")
        cluster.sql("DELETE FROM oauth.revocations WHERE subject LIKE 'rev-long-%%'")


# ====================================================================================
# 6. check_setup() and a hostnogssenc trust line  (FINDING, low)
# ====================================================================================

@contextlib.contextmanager
def hba(cluster: Cluster, text: str, reload: bool) -> Iterator[None]:
    path = cluster.data / "pg_hba.conf"
    before = path.read_text()
    path.write_text(text)
    if reload:
        cluster.reload()
    try:
        yield
    finally:
        path.write_text(before)
        if reload:
            cluster.reload()


def test_check_setup_names_a_trust_line_that_matches_plain_tcp(cluster, issuer):
    """HOLDS (was a finding).  trust_without_tls looks only at host/hostnossl lines; a hostnogssenc
    trust line matches TCP connections without TLS just as "host" does, and the
    checker says nothing about it (with the DBA guide's other choices: zero rows)."""
    nogss = ("local all postgres scram-sha-256\n"
             "host all postgres 127.0.0.1/32 scram-sha-256\n"
             "hostnogssenc all +rev_oauth_users 127.0.0.1/32 trust\n")
    cluster.sql("CREATE ROLE rev_oauth_users NOLOGIN; GRANT rev_oauth_users TO alice")
    cluster.sql("ALTER SYSTEM SET session_preload_libraries = 'pg_oauth'")
    cluster.reload()
    try:
        with hba(cluster, nogss, reload=True):
            # the line really takes a TCP connection without TLS
            assert attempt(cluster, "alice", issuer.mint(sub="alice"), sslmode="disable") == \
                "ssl_required"
            rows = cluster.sql("SELECT severity, check_name, finding FROM oauth.check_setup()")
        assert "trust_without_tls" in {r[1] for r in rows}, rows
    finally:
        cluster.sql("ALTER SYSTEM RESET session_preload_libraries")
        cluster.reload()
        cluster.sql("REVOKE rev_oauth_users FROM alice; DROP ROLE rev_oauth_users")


# ====================================================================================
# 7. A token role with pg_write_all_data forges tokens for other roles  (FINDING, medium)
# ====================================================================================

@pytest.fixture(scope="module")
def writer_cluster(issuer) -> Iterator[Cluster]:
    c = make_cluster(issuer)
    yield c
    c.stop()


def test_pg_write_all_data_token_role_cannot_mint_tokens_for_others(writer_cluster, issuer):
    """HOLDS (was a finding).  pg_write_all_data gives UPDATE on oauth.jwks_cache, whose
    only trigger checks the database; the workers adopt any cached JWKS newer than theirs
    (plpython_adapter._seed_keys -> jwks_cache.seed), so a token user holding it could
    plant its own key and sign tokens for any role the role map gives.  The defence:
    token logins refuse pg_write_all_data (role_policy.c) unless the DBA allows it."""
    c = writer_cluster
    c.sql("CREATE ROLE rev_etl LOGIN; GRANT pg_write_all_data TO rev_etl")
    c.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
          "SELECT issuer, 'sub', 'rev_etl', 'rev_etl' FROM oauth.issuers")
    assert attempt(c, "rev_etl", issuer.mint(sub="rev_etl")) == "privilege_forbidden"
    assert attempt(c, "alice", issuer.mint(sub="alice")) == "ok"  # the map itself works


# ====================================================================================
# Defences that held (these pass)
# ====================================================================================

def test_cached_login_sees_the_role_become_superuser(cluster, issuer):
    """HOLDS: check_role() runs on cached logins too."""
    token = issuer.mint(sub="alice")
    assert attempt(cluster, "alice", token) == "ok"
    assert attempt(cluster, "alice", token) == "ok"      # from the cache
    cluster.sql("ALTER ROLE alice SUPERUSER")
    try:
        assert attempt(cluster, "alice", token) == "superuser_forbidden"
    finally:
        cluster.sql("ALTER ROLE alice NOSUPERUSER")
    assert attempt(cluster, "alice", token) == "ok"


@pytest.mark.parametrize("grant", ["pg_read_server_files", "pg_write_server_files",
                                   "pg_execute_server_program"])
def test_cached_login_sees_a_privileged_grant(cluster, issuer, grant):
    """HOLDS: a membership granted after a cached login refuses the next one."""
    token = issuer.mint(sub="alice")
    assert attempt(cluster, "alice", token) == "ok"
    cluster.sql("CREATE ROLE rev_mid NOLOGIN; CREATE ROLE rev_mid2 NOLOGIN")
    cluster.sql(f"GRANT {grant} TO rev_mid; GRANT rev_mid TO rev_mid2; GRANT rev_mid2 TO alice")
    try:
        assert attempt(cluster, "alice", token) == "privilege_forbidden"
    finally:
        cluster.sql("REVOKE rev_mid2 FROM alice; DROP ROLE rev_mid2; DROP ROLE rev_mid")


def test_cached_login_sees_drop_and_recreate_of_the_role(cluster, issuer):
    """HOLDS: DROP ROLE, then the same name recreated as a superuser."""
    cluster.sql("CREATE ROLE ghost LOGIN")
    token = issuer.mint(sub="ghost")
    try:
        assert attempt(cluster, "ghost", token) == "ok"
        cluster.sql("DROP ROLE ghost")
        assert attempt(cluster, "ghost", token) == "unknown_role"
        cluster.sql("CREATE ROLE ghost LOGIN SUPERUSER")
        assert attempt(cluster, "ghost", token) == "superuser_forbidden"
    finally:
        cluster.sql("DROP ROLE IF EXISTS ghost")


def test_pg_database_owner_cannot_carry_privileges(cluster):
    """HOLDS: a token role owning a database is a member of pg_database_owner there,
    but pg_database_owner can be a member of no role (user.c AddRoleMems)."""
    with pytest.raises(psycopg.Error, match="cannot be a member of any role"):
        cluster.sql("GRANT pg_read_server_files TO pg_database_owner")


def test_session_authorization_after_login_is_denied(cluster, issuer):
    """HOLDS: SET SESSION AUTHORIZATION needs an authenticated superuser."""
    with cluster.token_connect("alice", issuer.mint(sub="alice")) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET SESSION AUTHORIZATION bob")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("ALTER ROLE alice SET session_preload_libraries = 'auto_explain'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("LOAD 'auto_explain'")


@pytest.mark.parametrize("setting", [
    "ALTER ROLE alice SET session_authorization = 'bob'",
    "ALTER DATABASE rev_sa SET session_authorization = 'bob'",
    "ALTER ROLE alice IN DATABASE rev_sa SET session_authorization = 'bob'",
])
def test_session_authorization_settings_do_not_change_the_role(cluster, issuer, setting):
    """HOLDS: stored with a NOTICE (PGC_S_TEST), ignored with a WARNING at login."""
    if not cluster.sql("SELECT 1 FROM pg_database WHERE datname = 'rev_sa'"):
        cluster.sql("CREATE DATABASE rev_sa")
    cluster.sql(setting)
    try:
        try:
            with cluster.token_connect("alice", issuer.mint(sub="alice"), dbname="rev_sa") as c:
                who = c.execute("SELECT current_user, session_user").fetchone()
        except psycopg.OperationalError:
            who = None  # refused is fine too
        assert who in (None, ("alice", "alice"))
    finally:
        cluster.sql("ALTER ROLE alice RESET ALL")
        cluster.sql("ALTER ROLE alice IN DATABASE rev_sa RESET ALL")
        cluster.sql("ALTER DATABASE rev_sa RESET ALL")


@pytest.mark.parametrize("options", [
    "-c\\ role=bob", "-c role\\=bob", "-crole=bob\\ -E", "-- -c role=bob",
    "-c 'role=bob'", "-c ro\\le=bob", "-c\trole=bob", "-cROLE=bob", "-e -- --role=bob",
    "-B 10 -c role=bob", "-E-crole=bob", "-P -E -s -crole=bob",
])
def test_odd_option_escapes_never_run_as_another_role(cluster, issuer, options):
    """HOLDS: refused by the parser or by the admission check, or harmless."""
    cluster.sql("GRANT bob TO alice")
    try:
        try:
            with cluster.token_connect("alice", issuer.mint(sub="alice"),
                                       options=options) as c:
                who = c.execute("SELECT current_user, session_user").fetchone()
        except psycopg.OperationalError:
            who = None
        assert who in (None, ("alice", "alice"))
    finally:
        cluster.sql("REVOKE bob FROM alice")


def test_physical_replication_refused_before_the_token(cluster, issuer, refused):
    """HOLDS: replication=true (physical) through a trust line for "replication"."""
    text = DEFAULT_HBA.format(admin="postgres") + \
        "hostssl replication all 127.0.0.1/32 trust\n"
    with hba(cluster, text, reload=True):
        assert refused("alice", issuer.mint(sub="alice"), replication="true") == \
            "replication_forbidden"


def test_truncated_user_name_does_not_collide(cluster, issuer):
    """HOLDS: a token mapping to a 64-byte role name is not admitted as the 63-byte
    role PostgreSQL truncates the requested user name to."""
    victim = "rtr" + "a" * 60                     # 63 bytes
    cluster.sql(f'CREATE ROLE "{victim}" LOGIN')
    cluster.sql("INSERT INTO oauth.role_map (issuer, claim, pattern, role) "
                "SELECT issuer, 'sub', '(rtr[a-z]+)', '\\1' FROM oauth.issuers")
    try:
        token = issuer.mint(sub=victim + "z")   # maps to the 64-byte name
        assert attempt(cluster, victim + "z", token) == "role_not_allowed"
    finally:
        cluster.sql("DELETE FROM oauth.role_map WHERE pattern = '(rtr[a-z]+)'")
        cluster.sql(f'DROP ROLE "{victim}"')
