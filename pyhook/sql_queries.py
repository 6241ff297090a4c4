"""Every statement pyhook runs in the server, and the types of their parameters.

The adapter prepares them in PL/Python; ``pg-oauth explain``/``check --dsn``
(``offline_config``) reads the configuration through psycopg with the same ones.
"""

from __future__ import annotations

# Every built-in is qualified (the functions that run these also pin their
# search_path, and so do the workers): a superuser runs them, in a database
# whose owner may not be one.
ISSUERS_QUERY = (
    "SELECT issuer, audiences, jwks_uri, jwks::pg_catalog.text AS jwks, algorithms, "
    "extract(epoch FROM leeway)::pg_catalog.float8 AS leeway, "
    "extract(epoch FROM max_token_lifetime)::pg_catalog.float8 AS max_token_lifetime, "
    "enabled, "
    "extract(epoch FROM jwks_refresh)::pg_catalog.float8 AS jwks_refresh, "
    "extract(epoch FROM jwks_cooldown)::pg_catalog.float8 AS jwks_cooldown, "
    "extract(epoch FROM http_timeout)::pg_catalog.float8 AS http_timeout, "
    "allow_insecure_http, allow_loopback_http, typ, required_claims, authorized_parties, require_sub, "
    "extract(epoch FROM jwks_max_stale)::pg_catalog.float8 AS jwks_max_stale, "
    "extract(epoch FROM jwks_refresh_min)::pg_catalog.float8 AS jwks_refresh_min, "
    "extract(epoch FROM jwks_refresh_max)::pg_catalog.float8 AS jwks_refresh_max, "
    "max_sessions_per_subject FROM oauth.issuers"
)
RULES_QUERY = (
    "SELECT id, issuer, claim, pattern, role, databases, "
    "client_cidrs::pg_catalog.text[] AS client_cidrs, "
    "max_sessions FROM oauth.role_map ORDER BY id"
)
# The shared-memory change counter (moved by every committed configuration
# change, read by the worker before each request); NULL on a standby, where
# replayed changes do not move it.
COUNTER_QUERY = (
    "SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL "
    "ELSE oauth.config_version() END AS counter"
)
# The table's version and what changed where (80-scale.sql); the table's oid
# tells a re-created extension from the one loaded. Whether to trust those
# counters: the structure counter (changes config_guard.c saw a statement make
# that the triggers may not have) and how many of the triggers keeping them fire.
TRACKING_TRIGGERS = (
    "issuers_changed", "role_map_changed", "revocations_changed", "issuers_counted",
    "role_map_counted", "revocations_counted", "revocations_inserted",
)
STATE_QUERY = (
    "SELECT s.tableoid::pg_catalog.int8 AS table_id, s.version, s.changes_counted, "
    "s.issuers_changes, s.role_map_changes, s.revocations_rewrites, "
    "oauth._config_structure_version() AS structure, "
    "(SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger t "
    "WHERE t.tgrelid OPERATOR(pg_catalog.=) ANY (ARRAY["
    "'oauth.issuers'::pg_catalog.regclass::pg_catalog.oid, "
    "'oauth.role_map'::pg_catalog.regclass::pg_catalog.oid, "
    "'oauth.revocations'::pg_catalog.regclass::pg_catalog.oid]) "
    "AND t.tgname OPERATOR(pg_catalog.=) ANY ('{" + ",".join(TRACKING_TRIGGERS) + "}'::"
    "pg_catalog.name[]) AND t.tgenabled OPERATOR(pg_catalog.=) ANY ('{O,A}'::"
    "pg_catalog.\"char\"[])) AS tracking FROM oauth.config_state s"
)
_REVOCATION_COLUMNS = (
    "SELECT id, issuer, subject, token_id, reason, "
    "extract(epoch FROM expires_at)::pg_catalog.float8 AS expires_at, "
    "extract(epoch FROM issued_before)::pg_catalog.float8 AS issued_before FROM oauth.revocations "
)
# expired rows are left out here; the validator also compares expires_at with now
REVOCATIONS_QUERY = (
    _REVOCATION_COLUMNS
    + "WHERE expires_at IS NULL OR expires_at OPERATOR(pg_catalog.>) pg_catalog.now() "
    "ORDER BY id"
)
# the rows added since a worker last read the table (by the primary key)
REVOCATIONS_SINCE_QUERY = (
    _REVOCATION_COLUMNS
    + "WHERE id OPERATOR(pg_catalog.>) $1 "
    "AND coalesce(expires_at OPERATOR(pg_catalog.>) pg_catalog.now(), true) ORDER BY id"
)
# Columns added after 1.0. Between the restart that loads a newer library and the
# ALTER EXTENSION pg_oauth UPDATE that adds them, the tables are 1.0's: the queries
# then read each missing one as its default (allow_loopback_http false, issued_before
# NULL: every token), so logins go on. Checked at every full read (the update is DDL,
# which makes the workers read everything again).
LATER_COLUMNS = {
    "allow_loopback_http": ("issuers", "allow_loopback_http, ", "false AS allow_loopback_http, "),
    "issued_before": (
        "revocations",
        "extract(epoch FROM issued_before)::pg_catalog.float8 AS issued_before ",
        "NULL::pg_catalog.float8 AS issued_before ",
    ),
}
MISSING_COLUMNS_QUERY = (
    "SELECT c.name FROM (VALUES ('issuers', 'allow_loopback_http'), "
    "('revocations', 'issued_before')) AS c(tab, name) "
    "WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a "
    "WHERE a.attrelid OPERATOR(pg_catalog.=) "
    "pg_catalog.to_regclass('oauth.' OPERATOR(pg_catalog.||) c.tab)::pg_catalog.oid "
    "AND a.attname OPERATOR(pg_catalog.=) c.name AND NOT a.attisdropped)"
)


def query_for(query: str, missing: frozenset[str]) -> str:
    """query with the columns of ``missing`` read as their defaults."""
    for name in missing:
        _table, column, default = LATER_COLUMNS[name]
        query = query.replace(column, default)
    return query


# worker_log.c: without the PL/Python CONTEXT lines; one LOG line per change
LOG_QUERY = "SELECT oauth._log($1, $2)"
LOG_CONFIG_QUERY = "SELECT oauth._log_config_applied($1, $2, $3) AS first"
# documents fetched before a committed oauth.refresh_keys() are never adopted again
JWKS_CACHE_QUERY = (
    "SELECT issuer, jwks_uri, discovered, jwks::pg_catalog.text AS jwks, etag, "
    "extract(epoch FROM max_age)::pg_catalog.float8 AS max_age, "
    "extract(epoch FROM fetched_at)::pg_catalog.float8 AS fetched_at FROM oauth.jwks_cache "
    "WHERE fetched_at OPERATOR(pg_catalog.>) oauth._keys_dropped_at(issuer)"
)
RECOVERY_QUERY = "SELECT pg_catalog.pg_is_in_recovery() AS standby"
# the statement as the client sent it: does it hold the token as a literal?
CURRENT_QUERY_QUERY = "SELECT pg_catalog.current_query() AS query"
CONFIG_DATABASE_QUERY = (
    "SELECT oauth._in_config_database() AS here, "
    "pg_catalog.current_setting('pg_oauth.database', true) AS config_database"
)
# Writers skip a row another process is writing (advisory lock, never waited
# for), never replace a newer document, and give up on any other lock quickly.
LOCK_TIMEOUT_QUERY = (
    "SELECT pg_catalog.current_setting('lock_timeout') AS previous, "
    "pg_catalog.set_config('lock_timeout', '100ms', true) AS now"
)
RESTORE_LOCK_TIMEOUT_QUERY = "SELECT pg_catalog.set_config('lock_timeout', $1, true)"
PERSIST_QUERY = (
    "INSERT INTO oauth.jwks_cache AS c "
    "(issuer, jwks_uri, discovered, jwks, etag, max_age, fetched_at) "
    "SELECT $1, $2, $3, $4::pg_catalog.jsonb, $5, pg_catalog.make_interval(secs => $6), "
    "pg_catalog.to_timestamp($7) "
    "WHERE pg_catalog.pg_try_advisory_xact_lock(1868658036, pg_catalog.hashtext($1)) "
    "AND EXISTS (SELECT 1 FROM oauth.issuers i WHERE i.issuer OPERATOR(pg_catalog.=) $1) "
    "ON CONFLICT (issuer) DO UPDATE SET jwks_uri = EXCLUDED.jwks_uri, "
    "discovered = EXCLUDED.discovered, jwks = EXCLUDED.jwks, etag = EXCLUDED.etag, "
    "max_age = EXCLUDED.max_age, fetched_at = EXCLUDED.fetched_at "
    "WHERE c.fetched_at OPERATOR(pg_catalog.<) EXCLUDED.fetched_at"
)
TEXT, BOOL, FLOAT8, INT8 = (
    "pg_catalog.text", "pg_catalog.bool", "pg_catalog.float8", "pg_catalog.int8"
)
PERSIST_TYPES = [TEXT, TEXT, BOOL, TEXT, TEXT, FLOAT8, FLOAT8]
RECORD_FETCH_QUERY = "SELECT oauth._record_jwks_fetch($1::pg_catalog.text, $2::pg_catalog.bool)"
RECORD_FETCH_TYPES = [TEXT, BOOL]
KEYS_CHANGED_QUERY = "SELECT oauth._keys_changed()"
KID_REFETCH_QUERY = (
    "SELECT oauth._kid_refetch_allowed($1::pg_catalog.text, $2::pg_catalog.float8) AS allowed"
)
KID_REFETCH_TYPES = [TEXT, FLOAT8]
# The role checks the backend makes after the validator (auth_hook.c): exists,
# may log in, reaches no privilege pg_oauth.allow_privileges does not name.
ROLE_QUERY = (
    "SELECT r.rolcanlogin, "
    "ARRAY(SELECT p.privilege FROM oauth.role_privileges(r.rolname) "
    "WITH ORDINALITY AS p(privilege, via, allowed, n) WHERE NOT p.allowed ORDER BY p.n) "
    "AS refused, "
    "ARRAY(SELECT p.via FROM oauth.role_privileges(r.rolname) "
    "WITH ORDINALITY AS p(privilege, via, allowed, n) WHERE NOT p.allowed ORDER BY p.n) "
    "AS refused_via "
    "FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) $1"
)
# Provisioning (55-provisioning.sql): the policies, read again whenever the
# configuration version moves; absent before ALTER EXTENSION pg_oauth UPDATE to 1.1.
PROVISIONING_PRESENT_QUERY = (
    "SELECT pg_catalog.to_regclass('oauth.provisioning') IS NOT NULL "
    "AND pg_catalog.to_regprocedure('oauth._provision(text,text,text,text[],boolean,boolean)') "
    "IS NOT NULL AS present"
)
PROVISIONING_QUERY = (
    "SELECT issuer, role_claim, role_pattern, role_name, lowercase, groups_claim, "
    "max_groups, enabled FROM oauth.provisioning"
)
GROUP_ROLES_QUERY = "SELECT id, issuer, group_pattern, role FROM oauth.group_roles ORDER BY id"
PROVISION_QUERY = "SELECT action, target, detail FROM oauth._provision($1, $2, $3, $4, $5, $6)"
PROVISION_TYPES = [TEXT, TEXT, TEXT, "pg_catalog.text[]", BOOL, BOOL]
