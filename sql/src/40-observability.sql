
------------------------------------------------------------------------------
-- Audit log and counters
------------------------------------------------------------------------------

-- One row per login attempt, written by the housekeeper off the login path
-- (primary only; a standby has the server-log line).
CREATE TABLE oauth.audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('ok', 'refused')),
    reason      text NOT NULL,
    issuer      text,
    subject     text,
    token_id    text,
    kid         text,
    alg         text,
    role        text,
    database    text,
    client_addr inet,
    ssl         boolean,
    elapsed_ms  float8,
    queue_ms    float8,
    -- a login, or oauth.authenticate() in a pooled transaction; NULL: a row
    -- written before 1.1 (a login); or a change provisioning made to a role
    kind        text DEFAULT 'login' CHECK (kind IN ('login', 'transaction', 'provisioning')),
    -- provisioning rows: what changed (created role "x", granted "g" to "x", ...)
    change      text
);
CREATE INDEX audit_log_at_idx ON oauth.audit_log (at);
CREATE INDEX audit_log_subject_idx ON oauth.audit_log (issuer, subject);
REVOKE ALL ON oauth.audit_log FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('oauth.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('oauth.audit_log_id_seq', '');
COMMENT ON TABLE oauth.audit_log IS
    'Token login attempts, oauth.authenticate() calls and the changes provisioning made to roles (kind), never the token; kept for pg_oauth.audit_retention';

CREATE FUNCTION oauth._stats(
        OUT issuer text, OUT attempts bigint, OUT successes bigint, OUT refusals jsonb,
        OUT jwks_fetches_ok bigint, OUT jwks_fetches_failed bigint,
        OUT key_cache_hits bigint, OUT key_cache_misses bigint,
        OUT validation_p50_ms float8, OUT validation_p99_ms float8,
        OUT queue_wait_p50_ms float8, OUT queue_wait_p99_ms float8,
        OUT decision_cache_hits bigint, OUT since timestamptz)
    RETURNS SETOF record
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_stats';
REVOKE ALL ON FUNCTION oauth._stats() FROM PUBLIC;

-- Counters per issuer since the server started or oauth.stats_reset();
-- issuer NULL: attempts refused before a trusted issuer was established.
CREATE VIEW oauth.stats AS SELECT * FROM oauth._stats();
REVOKE ALL ON oauth.stats FROM PUBLIC;
GRANT SELECT ON oauth.stats TO pg_read_all_stats;

CREATE FUNCTION oauth.stats_reset() RETURNS void
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_stats_reset';
REVOKE ALL ON FUNCTION oauth.stats_reset() FROM PUBLIC;
COMMENT ON FUNCTION oauth.stats_reset() IS
    'Reset the counters of oauth.stats and the histograms of oauth.stats_histogram (every issuer) to zero';

-- The latency histograms behind oauth.stats' p50/p99, for Prometheus: per
-- issuer and phase (validation: a worker's decision; queue_wait: a login
-- waiting for a worker; login: the whole attempt, as the audit's elapsed_ms),
-- count is how many took less than le_seconds, cumulative up to le_seconds
-- 'Infinity' (= total); sum_seconds is their exact sum.  The bounds are
-- powers of two of microseconds (64 us to about 8.4 s), boundaries of the
-- histograms themselves: counts, not estimates (docs/monitoring.md).
CREATE FUNCTION oauth._stats_histogram(
        OUT issuer text, OUT phase text, OUT le_seconds float8, OUT count bigint,
        OUT sum_seconds float8, OUT total bigint)
    RETURNS SETOF record
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_stats_histogram';
REVOKE ALL ON FUNCTION oauth._stats_histogram() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION oauth._stats_histogram() TO pg_read_all_stats;

CREATE VIEW oauth.stats_histogram AS SELECT * FROM oauth._stats_histogram();
REVOKE ALL ON oauth.stats_histogram FROM PUBLIC;
GRANT SELECT ON oauth.stats_histogram TO pg_read_all_stats;
COMMENT ON VIEW oauth.stats_histogram IS
    'Latency histograms of oauth.stats per issuer and phase (validation, queue_wait, login): cumulative counts below powers of two of microseconds, +Inf (Infinity) last, and the exact sum; reset with oauth.stats_reset()';

-- pyhook reports every discovery/JWKS fetch here.
CREATE FUNCTION oauth._record_jwks_fetch(issuer text, ok boolean) RETURNS void
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_record_jwks_fetch';
REVOKE ALL ON FUNCTION oauth._record_jwks_fetch(text, boolean) FROM PUBLIC;

-- pyhook asks before an unknown-kid refetch: one per cooldown per issuer,
-- whichever worker asks first.
CREATE FUNCTION oauth._kid_refetch_allowed(issuer text, cooldown_seconds float8)
    RETURNS boolean
    LANGUAGE c VOLATILE STRICT
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_kid_refetch_allowed';
REVOKE ALL ON FUNCTION oauth._kid_refetch_allowed(text, float8) FROM PUBLIC;

-- pyhook calls this when an issuer's key set changed: the decision cache
-- forgets everything decided before.
CREATE FUNCTION oauth._keys_changed() RETURNS void
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_keys_changed';
REVOKE ALL ON FUNCTION oauth._keys_changed() FROM PUBLIC;

-- The decision cache's own SHA-256 (sha256.c), exposed so that tests can
-- compare it with another implementation.
CREATE FUNCTION oauth._sha256(data bytea) RETURNS bytea
    LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_sha256';
REVOKE ALL ON FUNCTION oauth._sha256(bytea) FROM PUBLIC;

-- A view's functions are called with the reader's privileges: the monitoring
-- role the views are granted to must be able to call what is behind them.
GRANT EXECUTE ON FUNCTION oauth._sessions() TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION oauth._stats() TO pg_read_all_stats;

-- Worker health for monitoring (monitoring/): states and request counts,
-- never a token (last_error is the worker's own failure).
GRANT EXECUTE ON FUNCTION oauth.workers() TO pg_read_all_stats;

-- Key age per enabled issuer whose keys come over HTTP, for monitoring: when
-- its keys were last fetched (NULL: never, or emptied by oauth.refresh_keys()),
-- the refresh interval they are held to (pyhook's IssuerConfig.refresh_interval:
-- the document's max-age within jwks_refresh_min..max, else jwks_refresh), the
-- age past which they are no longer used, and how many keys the document holds.
-- The view reads oauth.jwks_cache with its owner's rights: the monitoring role
-- sees the times, never the key material.
CREATE VIEW oauth.key_freshness AS
SELECT i.issuer,
       c.fetched_at,
       CASE WHEN c.max_age IS NULL THEN i.jwks_refresh
            ELSE LEAST(GREATEST(c.max_age, i.jwks_refresh_min), i.jwks_refresh_max)
       END AS refresh_interval,
       i.jwks_max_stale AS max_stale,
       pg_catalog.jsonb_array_length(
           CASE WHEN pg_catalog.jsonb_typeof(c.jwks -> 'keys') = 'array'
                THEN c.jwks -> 'keys' END) AS keys
  FROM oauth.issuers AS i
  LEFT JOIN oauth.jwks_cache AS c ON c.issuer = i.issuer
 WHERE i.enabled AND i.jwks IS NULL;
REVOKE ALL ON oauth.key_freshness FROM PUBLIC;
GRANT SELECT ON oauth.key_freshness TO pg_read_all_stats;
COMMENT ON VIEW oauth.key_freshness IS
    'Enabled issuers whose keys come over HTTP: when the keys were last fetched (NULL: never), the refresh interval they are held to, their max staleness, and how many keys';
