-- pg_oauth 1.0: configuration tables, the validator contract and session functions.
\echo Use "CREATE EXTENSION pg_oauth" to load this file. \quit

-- Name resolution: every function below in SQL, PL/pgSQL or PL/Python sets
-- search_path = pg_catalog, pg_temp and qualifies the built-ins it calls.
-- Superusers and the workers run them: neither a caller's search_path nor the
-- configuration database's settings may choose which now() or = they get.
-- (C functions resolve no names.)

-- The workers call into schema oauth by name as the bootstrap superuser, and
-- CREATE EXTENSION quietly uses a schema "oauth" that already exists: refuse one
-- that someone else prepared (its owner could drop or replace what is in it).
DO $$
BEGIN
    IF NOT (SELECT a.rolsuper
              FROM pg_catalog.pg_namespace AS n
              JOIN pg_catalog.pg_authid AS a ON a.oid OPERATOR(pg_catalog.=) n.nspowner
             WHERE n.nspname OPERATOR(pg_catalog.=) 'oauth') THEN
        RAISE EXCEPTION 'schema "oauth" already exists and is not owned by a superuser'
            USING HINT = 'Drop or rename that schema, then CREATE EXTENSION pg_oauth again: it creates its own.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_class
                WHERE relnamespace OPERATOR(pg_catalog.=) 'oauth'::pg_catalog.regnamespace)
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_proc
                   WHERE pronamespace OPERATOR(pg_catalog.=) 'oauth'::pg_catalog.regnamespace)
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_operator
                   WHERE oprnamespace OPERATOR(pg_catalog.=) 'oauth'::pg_catalog.regnamespace)
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_type
                   WHERE typnamespace OPERATOR(pg_catalog.=) 'oauth'::pg_catalog.regnamespace) THEN
        RAISE EXCEPTION 'schema "oauth" already holds objects'
            USING HINT = 'pg_oauth needs an empty schema of its own: drop or rename that schema first.';
    END IF;
    IF EXISTS (SELECT 1
                 FROM pg_catalog.pg_namespace AS n,
                      pg_catalog.aclexplode(n.nspacl) AS x
                 LEFT JOIN pg_catalog.pg_authid AS g ON g.oid OPERATOR(pg_catalog.=) x.grantee
                WHERE n.nspname OPERATOR(pg_catalog.=) 'oauth'
                  AND x.privilege_type OPERATOR(pg_catalog.=) 'CREATE'
                  AND NOT coalesce(g.rolsuper, false)) THEN
        RAISE EXCEPTION 'others may create objects in schema "oauth"'
            USING HINT = 'REVOKE CREATE ON SCHEMA oauth from them, or let CREATE EXTENSION create the schema.';
    END IF;
END
$$;

-- Only the extension owner (a superuser) touches configuration.
REVOKE ALL ON SCHEMA oauth FROM PUBLIC;
GRANT USAGE ON SCHEMA oauth TO PUBLIC;

------------------------------------------------------------------------------
-- Configuration
------------------------------------------------------------------------------

CREATE TABLE oauth.issuers (
    issuer              text PRIMARY KEY,
    audiences           text[] NOT NULL
                        CHECK (cardinality(audiences) > 0),
    jwks_uri            text,
    jwks                jsonb,
    algorithms          text[] NOT NULL
                        DEFAULT '{RS256,RS384,RS512,PS256,PS384,PS512,ES256,ES384,ES512,EdDSA}',
    leeway              interval NOT NULL DEFAULT '30 seconds'
                        CHECK (leeway >= '0'::interval AND leeway <= '10 minutes'::interval),
    max_token_lifetime  interval
                        CHECK (max_token_lifetime > '0'::interval),
    enabled             boolean NOT NULL DEFAULT true,
    -- how often keys fetched over HTTP are refreshed, and how soon an unknown
    -- kid may trigger another fetch
    jwks_refresh        interval NOT NULL DEFAULT '5 minutes'
                        CHECK (jwks_refresh >= '1 second'::interval),
    jwks_cooldown       interval NOT NULL DEFAULT '30 seconds'
                        CHECK (jwks_cooldown >= '0'::interval),
    http_timeout        interval NOT NULL DEFAULT '5 seconds'
                        CHECK (http_timeout > '0'::interval AND http_timeout <= '30 seconds'::interval),
    -- plain http:// is refused unless the host is a loopback address or this is set
    allow_insecure_http boolean NOT NULL DEFAULT false,
    -- live token sessions one subject may hold at once (NULL: no limit)
    max_sessions_per_subject integer CHECK (max_sessions_per_subject > 0),
    comment             text,
    CHECK (jwks IS NULL OR jsonb_typeof(jwks) = 'object'),
    CHECK (NOT algorithms && '{none,HS256,HS384,HS512}'::text[])
);

COMMENT ON TABLE oauth.issuers IS
    'Trusted token issuers: exact iss value, accepted audiences, where the keys come from';

CREATE TABLE oauth.role_map (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    issuer          text NOT NULL REFERENCES oauth.issuers (issuer)
                    ON UPDATE CASCADE ON DELETE CASCADE,
    claim           text NOT NULL DEFAULT 'sub',
    pattern         text NOT NULL,
    role            text NOT NULL,
    databases       text[],
    client_cidrs    cidr[],
    -- live sessions a subject may hold through this rule (NULL: no limit)
    max_sessions    integer CHECK (max_sessions > 0),
    comment         text
);

COMMENT ON TABLE oauth.role_map IS
    'Which roles a token may log in as: claim (dotted path) value fully matching pattern gives role (\1 substitutions allowed)';

CREATE INDEX role_map_issuer_idx ON oauth.role_map (issuer);

-- One row whose version moves with every committed configuration change; the
-- validator caches configuration per version (a standby reads it here).
CREATE TABLE oauth.config_state (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version     bigint NOT NULL DEFAULT 1
);
INSERT INTO oauth.config_state DEFAULT VALUES;

------------------------------------------------------------------------------
-- C functions
------------------------------------------------------------------------------

-- Called by the configuration triggers: bumps the shared-memory version and
-- wakes the validator workers when the transaction commits.
CREATE FUNCTION oauth._config_changed() RETURNS void
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_config_changed';
REVOKE ALL ON FUNCTION oauth._config_changed() FROM PUBLIC;

CREATE FUNCTION oauth.claims() RETURNS jsonb
    LANGUAGE c STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_claims';
COMMENT ON FUNCTION oauth.claims() IS
    'Claims of the token this session logged in with; NULL for a session that did not log in with a token';

CREATE FUNCTION oauth.session(
        OUT issuer text, OUT subject text, OUT token_id text,
        OUT expires_at timestamptz, OUT login_role text)
    RETURNS record
    LANGUAGE c STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_session';
COMMENT ON FUNCTION oauth.session() IS
    'Issuer, subject, token id and expiry of this session''s token login; all NULL otherwise';

CREATE FUNCTION oauth.workers(
        OUT worker int, OUT pid int, OUT state text, OUT requests bigint,
        OUT last_error text)
    RETURNS SETOF record
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_workers';
REVOKE ALL ON FUNCTION oauth.workers() FROM PUBLIC;
COMMENT ON FUNCTION oauth.workers() IS
    'State of the validator background workers';

CREATE FUNCTION oauth.config_version() RETURNS bigint
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_config_version';
REVOKE ALL ON FUNCTION oauth.config_version() FROM PUBLIC;

------------------------------------------------------------------------------
-- Claim access for SQL and RLS policies
------------------------------------------------------------------------------

-- Path syntax (same as oauth.role_map.claim): a top-level claim whose name is
-- exactly the path wins (names such as 'https://example.com/groups');
-- otherwise segments separated by dots, a segment may be double-quoted to
-- contain dots.  Strings come back unquoted, other JSON values as JSON text.
-- In C: RLS policies call it per row, and nothing in it resolves through the
-- caller's search_path.
CREATE FUNCTION oauth.claim(path text) RETURNS text
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_claim';
COMMENT ON FUNCTION oauth.claim(text) IS
    'One claim of this session''s token by path (e.g. ''email'', ''realm_access.roles''); NULL when absent or not a token session';

------------------------------------------------------------------------------
-- The validator (PL/Python); the logic lives in the pyhook package
------------------------------------------------------------------------------

-- Loads pyhook from pg_oauth.python_path once per process.
CREATE FUNCTION oauth._adapter_load() RETURNS void
    LANGUAGE plpython3u
    SET search_path = pg_catalog, pg_temp
    AS $$
if 'pg_oauth_adapter' not in GD:
    import sys
    path = plpy.execute(
        "SELECT pg_catalog.current_setting('pg_oauth.python_path', true) AS p")[0]['p']
    if path and path not in sys.path:
        sys.path.insert(0, path)
    from pyhook.plpython_adapter import Adapter
    GD['pg_oauth_adapter'] = Adapter(plpy)
$$;
REVOKE ALL ON FUNCTION oauth._adapter_load() FROM PUBLIC;

CREATE FUNCTION oauth.validate(
        token text, requested_role text, database text, client_addr inet,
        ssl boolean, config_version bigint)
    RETURNS TABLE(ok boolean, reason text, detail text, allowed_roles text[],
                  issuer text, subject text, token_id text,
                  expires_at timestamptz, claims jsonb,
                  kid text, alg text, key_cache text, max_sessions integer)
    LANGUAGE plpython3u VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
adapter = GD.get('pg_oauth_adapter')
if adapter is None:
    plpy.execute("SELECT oauth._adapter_load()")
    adapter = GD['pg_oauth_adapter']
return [adapter.validate(token, requested_role, database, client_addr, ssl, config_version)]
$$;
REVOKE ALL ON FUNCTION oauth.validate(text, text, text, inet, boolean, bigint) FROM PUBLIC;
COMMENT ON FUNCTION oauth.validate(text, text, text, inet, boolean, bigint) IS
    'The validator contract called by the pg_oauth workers: one decision per token';

-- Run by each worker when it starts: imports pyhook, loads configuration and keys.
CREATE FUNCTION oauth.warmup() RETURNS text
    LANGUAGE plpython3u VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
adapter = GD.get('pg_oauth_adapter')
if adapter is None:
    plpy.execute("SELECT oauth._adapter_load()")
    adapter = GD['pg_oauth_adapter']
return adapter.warmup()
$$;
REVOKE ALL ON FUNCTION oauth.warmup() FROM PUBLIC;

------------------------------------------------------------------------------
-- Configuration change tracking and checks
------------------------------------------------------------------------------

CREATE FUNCTION oauth._config_trigger() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    UPDATE oauth.config_state SET version = version OPERATOR(pg_catalog.+) 1;
    PERFORM oauth._config_changed();
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION oauth._config_trigger() FROM PUBLIC;

CREATE TRIGGER issuers_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.issuers
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._config_trigger();
CREATE TRIGGER role_map_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.role_map
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._config_trigger();

-- Reject a rule the validator could not use, at the time it is written.
CREATE FUNCTION oauth._role_map_check() RETURNS trigger
    LANGUAGE plpython3u
    SET search_path = pg_catalog, pg_temp
    AS $$
import re
new = TD['new']
try:
    compiled = re.compile(new['pattern'])
except re.error as e:
    plpy.error('invalid pattern in oauth.role_map: %s' % e,
               hint='Patterns use Python regular expression syntax and must match the whole claim value.')
# groups referenced by the role template must exist in the pattern
groups = [int(g) for g in re.findall(r'\\(\d+)', new['role'])]
if groups and max(groups) > compiled.groups:
    plpy.error('role template %r uses group \\%d but the pattern has %d group(s)'
               % (new['role'], max(groups), compiled.groups))
if not new['claim'] or new['claim'].strip() != new['claim']:
    plpy.error('claim path must be a non-empty claim name or dotted path without surrounding spaces')
return None
$$;
REVOKE ALL ON FUNCTION oauth._role_map_check() FROM PUBLIC;

CREATE TRIGGER role_map_check
    BEFORE INSERT OR UPDATE ON oauth.role_map
    FOR EACH ROW EXECUTE FUNCTION oauth._role_map_check();

-- pg_dump keeps the DBA's configuration (extension tables are skipped otherwise).
SELECT pg_catalog.pg_extension_config_dump('oauth.issuers', '');
SELECT pg_catalog.pg_extension_config_dump('oauth.role_map', '');
SELECT pg_catalog.pg_extension_config_dump('oauth.role_map_id_seq', '');

-- Wake the workers when this CREATE EXTENSION commits.
SELECT oauth._config_changed();
------------------------------------------------------------------------------
-- Privileged roles: what a token login role can reach (role_policy.c)
------------------------------------------------------------------------------

-- Every privilege token logins refuse by default that the role reaches, itself
-- or through membership at any depth, the role that carries it, and whether
-- pg_oauth.allow_privileges allows it.  The hook, oauth.explain and
-- oauth.check_setup all ask this one function.
CREATE FUNCTION oauth.role_privileges(role name,
        OUT privilege text, OUT via text, OUT allowed boolean)
    RETURNS SETOF record
    LANGUAGE c STABLE STRICT
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_role_privileges';
REVOKE ALL ON FUNCTION oauth.role_privileges(name) FROM PUBLIC;
COMMENT ON FUNCTION oauth.role_privileges(name) IS
    'Privileges a role reaches (superuser, createrole before 16, replication, bypassrls, server file/program roles), through which role, and whether token logins allow them (pg_oauth.allow_privileges)';
------------------------------------------------------------------------------
-- Validation depth: token policy per issuer, key cache lifecycle, revocations,
-- the persisted JWKS cache and oauth.explain (the logic lives in pyhook).
------------------------------------------------------------------------------

-- Accept required_claims entries the validator can use: a claim path, optionally
-- followed by =value; anything else would refuse every token of the issuer.
CREATE FUNCTION oauth._required_claims_ok(entries text[]) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
SELECT coalesce(pg_catalog.bool_and(e IS NOT NULL AND
                                    e OPERATOR(pg_catalog.~) '^[^=\s]([^=]*[^=\s])?(=.*)?$'),
                true)
  FROM pg_catalog.unnest(entries) AS e
$$;
REVOKE ALL ON FUNCTION oauth._required_claims_ok(text[]) FROM PUBLIC;

ALTER TABLE oauth.issuers
    -- accepted typ header values, compared case-insensitively with an optional
    -- "application/" prefix (RFC 8725 explicit typing); NULL: any typ or none
    ADD COLUMN typ text[]
        CHECK (typ IS NULL OR (cardinality(typ) > 0 AND array_position(typ, NULL) IS NULL)),
    -- claim paths that must be present, or path=value (JSON, else a string);
    -- an array claim satisfies path=value when one element equals value
    ADD COLUMN required_claims text[]
        CHECK (oauth._required_claims_ok(required_claims)),
    -- accepted azp (authorized party) values; NULL: azp not checked
    ADD COLUMN authorized_parties text[]
        CHECK (authorized_parties IS NULL OR cardinality(authorized_parties) > 0),
    -- tokens must carry a non-empty string sub (RFC 9068 2.2); false only for
    -- providers whose tokens have none (missing_claim otherwise)
    ADD COLUMN require_sub boolean NOT NULL DEFAULT true,
    -- stale-if-error: when refreshes fail, the last good keys keep working this
    -- long after they were fetched, then logins are refused (jwks_unavailable)
    ADD COLUMN jwks_max_stale interval NOT NULL DEFAULT '1 day'
        CHECK (jwks_max_stale >= '1 second'::interval),
    -- a JWKS response's Cache-Control max-age is honoured within these bounds
    -- (jwks_refresh applies when the response has none); the ceiling bounds how
    -- long a key the issuer has withdrawn keeps working
    ADD COLUMN jwks_refresh_min interval NOT NULL DEFAULT '1 minute'
        CHECK (jwks_refresh_min >= '1 second'::interval),
    ADD COLUMN jwks_refresh_max interval NOT NULL DEFAULT '1 hour',
    ADD CONSTRAINT issuers_jwks_refresh_bounds CHECK (jwks_refresh_max >= jwks_refresh_min);

------------------------------------------------------------------------------
-- Revocations: part of the configuration (cached per version, no query per login)
------------------------------------------------------------------------------

-- A row revokes every token whose iss/sub/jti equal all of its non-NULL columns,
-- until expires_at (NULL: forever).
CREATE TABLE oauth.revocations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    issuer      text,
    subject     text,
    token_id    text,
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,    -- NULL: forever
    CHECK (issuer IS NOT NULL OR subject IS NOT NULL OR token_id IS NOT NULL)
);

COMMENT ON TABLE oauth.revocations IS
    'Revoked tokens: by token id (jti), subject, issuer, or a combination; refused with reason revoked until expires_at';

CREATE TRIGGER revocations_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.revocations
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._config_trigger();

SELECT pg_catalog.pg_extension_config_dump('oauth.revocations', '');
SELECT pg_catalog.pg_extension_config_dump('oauth.revocations_id_seq', '');

------------------------------------------------------------------------------
-- The last good JWKS per fetched issuer, so a restarted worker or server (or
-- a standby, from what replicated) starts with keys and without the network.
-- Written by the validator on a primary after a successful fetch; public key
-- members only. A cache: not dumped, safe to empty.
------------------------------------------------------------------------------

CREATE TABLE oauth.jwks_cache (
    issuer      text PRIMARY KEY REFERENCES oauth.issuers (issuer)
                ON UPDATE CASCADE ON DELETE CASCADE,
    jwks_uri    text NOT NULL,          -- where the document came from
    discovered  boolean NOT NULL,       -- jwks_uri came from OIDC discovery
    jwks        jsonb NOT NULL CHECK (jsonb_typeof(jwks) = 'object'),
    etag        text,                   -- sent back as If-None-Match
    max_age     interval,               -- Cache-Control max-age of the response
    fetched_at  timestamptz NOT NULL
);

COMMENT ON TABLE oauth.jwks_cache IS
    'Last good JWKS (public keys only) fetched for each issuer; loaded by validator workers at start';

------------------------------------------------------------------------------
-- oauth.explain: the whole decision trail, without trying a login
------------------------------------------------------------------------------

CREATE FUNCTION oauth.explain(
        token text, role text, database text DEFAULT current_database(),
        client_addr inet DEFAULT NULL)
    RETURNS TABLE(step integer, name text, outcome text, input text, detail text)
    LANGUAGE plpython3u VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
adapter = GD.get('pg_oauth_adapter')
if adapter is None:
    plpy.execute("SELECT oauth._adapter_load()")
    adapter = GD['pg_oauth_adapter']
return adapter.explain(token, role, database,
                       None if client_addr is None else str(client_addr))
$$;
REVOKE ALL ON FUNCTION oauth.explain(text, text, text, inet) FROM PUBLIC;
COMMENT ON FUNCTION oauth.explain(text, text, text, inet) IS
    'Dry run of a token login: every check with its input and outcome, then the decision; never shows the signature or key material';

------------------------------------------------------------------------------
-- Live token sessions: the view, revocation of live sessions
------------------------------------------------------------------------------

CREATE FUNCTION oauth._sessions(
        OUT pid integer, OUT role text, OUT database text, OUT issuer text,
        OUT subject text, OUT token_id text, OUT expires_at timestamptz,
        OUT client_addr inet, OUT login_time timestamptz, OUT state text)
    RETURNS SETOF record
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_sessions';
REVOKE ALL ON FUNCTION oauth._sessions() FROM PUBLIC;

-- Every live token session of this server, from shared memory.
CREATE VIEW oauth.sessions AS SELECT * FROM oauth._sessions();
REVOKE ALL ON oauth.sessions FROM PUBLIC;
GRANT SELECT ON oauth.sessions TO pg_read_all_stats;
COMMENT ON VIEW oauth.sessions IS
    'Live token sessions: pid, role, database, issuer, subject, token id, expiry, client address, login time';

CREATE FUNCTION oauth._end_sessions(issuer text, subject text, token_id text)
    RETURNS integer
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_end_sessions';
REVOKE ALL ON FUNCTION oauth._end_sessions(text, text, text) FROM PUBLIC;

-- Record a revocation (checked at every login) and end the live sessions it
-- covers at once.  Returns how many sessions were ended.
CREATE FUNCTION oauth.revoke(token_id text DEFAULT NULL, subject text DEFAULT NULL,
                             issuer text DEFAULT NULL, expires_at timestamptz DEFAULT NULL,
                             reason text DEFAULT NULL)
    RETURNS integer
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF token_id IS NULL AND subject IS NULL AND issuer IS NULL THEN
        RAISE EXCEPTION 'oauth.revoke needs a token_id, a subject or an issuer';
    END IF;
    INSERT INTO oauth.revocations (issuer, subject, token_id, reason, expires_at)
         VALUES (revoke.issuer, revoke.subject, revoke.token_id, revoke.reason, revoke.expires_at);
    RETURN oauth._end_sessions(revoke.issuer, revoke.subject, revoke.token_id);
END
$$;
REVOKE ALL ON FUNCTION oauth.revoke(text, text, text, timestamptz, text) FROM PUBLIC;
COMMENT ON FUNCTION oauth.revoke(text, text, text, timestamptz, text) IS
    'Revoke by token id, subject and/or issuer (until expires_at, NULL: forever) and end the live sessions it covers';

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
    queue_ms    float8
);
CREATE INDEX audit_log_at_idx ON oauth.audit_log (at);
CREATE INDEX audit_log_subject_idx ON oauth.audit_log (issuer, subject);
REVOKE ALL ON oauth.audit_log FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('oauth.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('oauth.audit_log_id_seq', '');
COMMENT ON TABLE oauth.audit_log IS
    'Token login attempts (never the token), kept for pg_oauth.audit_retention';

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

------------------------------------------------------------------------------
-- Brute-force brake: the addresses it holds, and letting them go
------------------------------------------------------------------------------

CREATE FUNCTION oauth._rate_limits(
        OUT address text, OUT failures integer, OUT delay_ms integer,
        OUT one_at_a_time boolean, OUT window_start timestamptz,
        OUT window_end timestamptz, OUT last_failure timestamptz)
    RETURNS SETOF record
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_rate_limits';
REVOKE ALL ON FUNCTION oauth._rate_limits() FROM PUBLIC;
-- a view's functions run with the reader's privileges, not the view owner's
GRANT EXECUTE ON FUNCTION oauth._rate_limits() TO pg_read_all_stats;

-- Every client address whose refused token logins are being counted now
-- ('local': all Unix-socket clients): how many, how long its next refusal is
-- held back, whether its tokens are checked one at a time, and when the
-- count starts over.
CREATE VIEW oauth.rate_limits AS SELECT * FROM oauth._rate_limits();
REVOKE ALL ON oauth.rate_limits FROM PUBLIC;
GRANT SELECT ON oauth.rate_limits TO pg_read_all_stats;
COMMENT ON VIEW oauth.rate_limits IS
    'Client addresses the brute-force brake is counting: refusals, delay of the next refusal, one at a time, window';

-- Forget the refusals of an address, of every address within a network, or
-- (NULL) of all; returns how many addresses were being braked.
CREATE FUNCTION oauth.rate_limit_reset(address inet DEFAULT NULL) RETURNS integer
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_rate_limit_reset';
REVOKE ALL ON FUNCTION oauth.rate_limit_reset(inet) FROM PUBLIC;
COMMENT ON FUNCTION oauth.rate_limit_reset(inet) IS
    'Let an address (or every address within a network; NULL: all) go from the brute-force brake';

-- The same by name, where 'local' means the Unix-socket clients.
CREATE FUNCTION oauth.rate_limit_reset(address text) RETURNS integer
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_rate_limit_reset_text';
REVOKE ALL ON FUNCTION oauth.rate_limit_reset(text) FROM PUBLIC;
COMMENT ON FUNCTION oauth.rate_limit_reset(text) IS
    'Let an address (''local'': the Unix-socket clients; NULL: all) go from the brute-force brake';
------------------------------------------------------------------------------
-- One configuration database
------------------------------------------------------------------------------

-- The validator workers read configuration only in the database named by
-- pg_oauth.database.  Applications create the extension in their own databases
-- for oauth.claims(), oauth.claim() and oauth.session(); there, writing
-- configuration (or oauth.revoke, oauth.explain) is an error that names the
-- right database instead of rows nothing reads.
CREATE FUNCTION oauth._in_config_database() RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
SELECT pg_catalog.current_database()::text OPERATOR(pg_catalog.=)
       COALESCE(pg_catalog.current_setting('pg_oauth.database', true), 'postgres')
$$;

-- Every write to pg_oauth's tables passes one guard.  Configuration tables
-- (argument 'configuration') are written only in pg_oauth.database.  And only
-- superusers write any of them, whatever grants say: a role with
-- pg_write_all_data (or an UPDATE grant by mistake) could otherwise plant a
-- signing key of its own in oauth.jwks_cache, which the workers adopt, or
-- rewrite the audit log.  Token logins refuse such roles too.
CREATE FUNCTION oauth._guard_write() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF TG_NARGS OPERATOR(pg_catalog.>) 0
       AND TG_ARGV[0] OPERATOR(pg_catalog.=) 'configuration'
       AND NOT oauth._in_config_database() THEN
        RAISE EXCEPTION 'pg_oauth configuration lives in database "%" (pg_oauth.database), not in "%"',
              COALESCE(pg_catalog.current_setting('pg_oauth.database', true), 'postgres'),
              pg_catalog.current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Connect to that database to change issuers, role_map or revocations. '
                         'In this database the session functions work: oauth.claims(), oauth.claim(), oauth.session().';
    END IF;
    IF NOT coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles AS r
                      WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER), false) THEN
        RAISE EXCEPTION 'only superusers may write %.%', TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION oauth._guard_write() FROM PUBLIC;

CREATE TRIGGER issuers_guard
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.issuers
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._guard_write('configuration');
CREATE TRIGGER role_map_guard
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.role_map
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._guard_write('configuration');
CREATE TRIGGER revocations_guard
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.revocations
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._guard_write('configuration');
CREATE TRIGGER jwks_cache_guard
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.jwks_cache
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._guard_write('configuration');
CREATE TRIGGER config_state_guard
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.config_state
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._guard_write();
CREATE TRIGGER audit_log_guard
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._guard_write();

-- Rows applied by logical replication (or under session_replication_role =
-- replica) fire only ALWAYS triggers: the guards hold and the version moves
-- for them too.
ALTER TABLE oauth.issuers ENABLE ALWAYS TRIGGER issuers_changed;
ALTER TABLE oauth.issuers ENABLE ALWAYS TRIGGER issuers_guard;
ALTER TABLE oauth.role_map ENABLE ALWAYS TRIGGER role_map_changed;
ALTER TABLE oauth.role_map ENABLE ALWAYS TRIGGER role_map_guard;
ALTER TABLE oauth.role_map ENABLE ALWAYS TRIGGER role_map_check;
ALTER TABLE oauth.revocations ENABLE ALWAYS TRIGGER revocations_changed;
ALTER TABLE oauth.revocations ENABLE ALWAYS TRIGGER revocations_guard;
ALTER TABLE oauth.jwks_cache ENABLE ALWAYS TRIGGER jwks_cache_guard;
ALTER TABLE oauth.config_state ENABLE ALWAYS TRIGGER config_state_guard;
ALTER TABLE oauth.audit_log ENABLE ALWAYS TRIGGER audit_log_guard;
------------------------------------------------------------------------------
-- Setup checker: oauth.check_setup(), also run by `pg-oauth doctor`
------------------------------------------------------------------------------
-- It reads pg_hba_file_rules (the file on disk, as the next reload would load
-- it), the settings and the catalogs, and returns one row per risk found.
-- The check names are stable: tools and tests rely on them.

-- Does a library list (shared_preload_libraries, session_preload_libraries)
-- name pg_oauth?  Accepts pg_oauth, "$libdir/pg_oauth", /path/pg_oauth.so.
CREATE FUNCTION oauth._lists_pg_oauth(libraries text) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
SELECT coalesce(pg_catalog.bool_or(pg_catalog.btrim(lib, ' "') ~ '(^|/)pg_oauth(\.so)?$'), false)
  FROM pg_catalog.regexp_split_to_table(coalesce(libraries, ''), ',') AS lib
$$;
REVOKE ALL ON FUNCTION oauth._lists_pg_oauth(text) FROM PUBLIC;

-- The roles a pg_hba user column matches, as PostgreSQL matches them: "all"
-- is every role; "+group" is the group and its members at any depth
-- (superusers are not members by being superusers); a name is that role.
-- via: 'all', the '+group' entry, or 'name'.
CREATE FUNCTION oauth._hba_user_roles(users text[])
    RETURNS TABLE(roleid oid, rolname name, via text)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
WITH RECURSIVE matched(roleid, via) AS (
    SELECT a.oid,
           CASE WHEN u = 'all' THEN 'all'
                WHEN pg_catalog.left(u, 1) = '+' THEN u
                ELSE 'name' END
      FROM pg_catalog.unnest(users) AS u
      JOIN pg_catalog.pg_authid AS a
        ON u = 'all'
        OR a.rolname = CASE WHEN pg_catalog.left(u, 1) = '+'
                            THEN pg_catalog.substr(u, 2) ELSE u END
    UNION
    SELECT m.member, matched.via
      FROM matched
      JOIN pg_catalog.pg_auth_members AS m ON m.roleid = matched.roleid
     WHERE matched.via LIKE '+%'
)
SELECT DISTINCT ON (a.oid) a.oid, a.rolname, matched.via
  FROM matched
  JOIN pg_catalog.pg_authid AS a ON a.oid = matched.roleid
 ORDER BY a.oid, matched.via
$$;
REVOKE ALL ON FUNCTION oauth._hba_user_roles(text[]) FROM PUBLIC;

-- "line 7: hostssl all +oauth_users 0.0.0.0 0.0.0.0 trust", as written
-- in pg_hba.conf syntax (address and mask as two fields).
CREATE FUNCTION oauth._hba_line_text(line_number integer, type text, database text[],
                                     user_name text[], address text, netmask text,
                                     auth_method text)
    RETURNS text
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
SELECT pg_catalog.format('line %s: %s',
           line_number,
           pg_catalog.concat_ws(' ', type,
                                pg_catalog.array_to_string(database, ','),
                                pg_catalog.array_to_string(user_name, ','),
                                address, netmask, auth_method))
$$;
REVOKE ALL ON FUNCTION oauth._hba_line_text(integer, text, text[], text[], text, text, text)
    FROM PUBLIC;

-- "alice, bob, carol and 4 more"
CREATE FUNCTION oauth._name_list(names text[], shown integer DEFAULT 8)
    RETURNS text
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
SELECT pg_catalog.array_to_string(names[1:shown], ', ')
       || CASE WHEN pg_catalog.cardinality(names) > shown
               THEN pg_catalog.format(' and %s more', pg_catalog.cardinality(names) - shown)
               ELSE '' END
$$;
REVOKE ALL ON FUNCTION oauth._name_list(text[], integer) FROM PUBLIC;

-- One row per risk ('risk': open or broken; 'warning': right in some setups,
-- check it).  No row at all: nothing found.  Meant to run in the database
-- named by pg_oauth.database, where oauth.role_map lives.
CREATE FUNCTION oauth.check_setup()
    RETURNS TABLE(severity text, check_name text, finding text, fix text)
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    -- the placeholder or default when the library is not loaded
    config_db text := coalesce(NULLIF(
                          pg_catalog.current_setting('pg_oauth.database', true), ''),
                          'postgres');
    in_config_db boolean := pg_catalog.current_database() = config_db;
    first_trust integer;
    setting text;
    names text[];
    file record;
BEGIN
    SELECT pg_catalog.min(h.line_number) INTO first_trust
      FROM pg_catalog.pg_hba_file_rules AS h WHERE h.auth_method = 'trust';

    -- pg_hba.conf ---------------------------------------------------------------

    RETURN QUERY
    SELECT 'risk', 'hba_file_error',
           pg_catalog.format('pg_hba.conf line %s: %s', h.line_number, h.error),
           'Fix the line: a reload keeps the previous pg_hba.conf and a restart fails until then'
      FROM pg_catalog.pg_hba_file_rules AS h
     WHERE h.error IS NOT NULL
     ORDER BY h.line_number;

    -- PostgreSQL 18's oauth lines are token lines too (pg_oauth as their validator)
    IF first_trust IS NULL AND NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_hba_file_rules AS h WHERE h.auth_method = 'oauth') THEN
        RETURN QUERY SELECT 'warning', 'no_token_lines',
            'pg_hba.conf has no trust line: pg_oauth acts only on trust lines, so no token login can succeed',
            'Add a token line, e.g. hostssl all +oauth_users 0.0.0.0/0 trust, below the break-glass lines';
    END IF;

    RETURN QUERY
    SELECT 'risk', 'trust_for_all_users',
           pg_catalog.format('pg_hba.conf %s: a trust line for all users; if pg_oauth is ever missing from shared_preload_libraries it admits any role, superusers included, with no credential',
                             oauth._hba_line_text(h.line_number, h.type, h.database, h.user_name,
                                                  h.address, h.netmask, h.auth_method)),
           'Scope token lines to a group role: replace all by +oauth_users (CREATE ROLE oauth_users NOLOGIN; GRANT oauth_users TO each token role)'
      FROM pg_catalog.pg_hba_file_rules AS h
     WHERE h.auth_method = 'trust' AND 'all' = ANY (h.user_name)
     ORDER BY h.line_number;

    RETURN QUERY
    SELECT 'risk', 'trust_without_tls',
           pg_catalog.format('pg_hba.conf %s: a %s trust line matches TCP connections without TLS; pg_oauth refuses token logins there (pg_oauth.require_ssl), but without the library it is plain trust over an unencrypted connection',
                             oauth._hba_line_text(h.line_number, h.type, h.database, h.user_name,
                                                  h.address, h.netmask, h.auth_method),
                             h.type),
           'Use hostssl for token lines'
      FROM pg_catalog.pg_hba_file_rules AS h
     WHERE h.auth_method = 'trust' AND h.type IN ('host', 'hostnossl', 'hostnogssenc')
     ORDER BY h.line_number;

    RETURN QUERY
    SELECT 'risk', 'oauth_without_tls',
           pg_catalog.format('pg_hba.conf %s: a %s oauth line matches TCP connections without TLS; the client sends its bearer token before pg_oauth can refuse the connection (pg_oauth.require_ssl), so the token crosses the network in clear',
                             oauth._hba_line_text(h.line_number, h.type, h.database, h.user_name,
                                                  h.address, h.netmask, h.auth_method),
                             h.type),
           'Use hostssl for oauth lines (and sslmode=verify-full on the clients)'
      FROM pg_catalog.pg_hba_file_rules AS h
     WHERE h.auth_method = 'oauth' AND h.type IN ('host', 'hostnossl', 'hostnogssenc')
     ORDER BY h.line_number;

    -- PostgreSQL 18's oauth lines on another validator: PostgreSQL itself refuses
    -- a line whose validator oauth_validator_libraries does not list, a line
    -- without validator= when that setting lists several (both hba_file_error),
    -- and every oauth line while it is empty; a valid line always shows its
    -- validator in options, given or the one library listed
    RETURN QUERY
    SELECT 'risk', 'oauth_line_other_validator',
           pg_catalog.format('pg_hba.conf %s: the validator of this oauth line is "%s", not pg_oauth: its logins skip pg_oauth''s policy (superusers refused, oauth.role_map, the role policy, revocation, session limits, the audit log)',
                             oauth._hba_line_text(h.line_number, h.type, h.database, h.user_name,
                                                  h.address, h.netmask, h.auth_method),
                             v.validator),
           'Add validator=pg_oauth to the line (pg_oauth in oauth_validator_libraries); keep another validator only on lines it is meant to decide, and keep superusers off them'
      FROM pg_catalog.pg_hba_file_rules AS h,
           LATERAL (SELECT pg_catalog.substr(o, 11)
                      FROM pg_catalog.unnest(h.options) AS o
                     WHERE pg_catalog.left(o, 10) = 'validator=') AS v(validator)
     WHERE h.auth_method = 'oauth' AND h.error IS NULL
       AND v.validator !~ '(^|/)pg_oauth(\.so)?$'
     ORDER BY h.line_number;

    -- without a map PostgreSQL compares the validator's identity with the role
    -- name; pg_oauth's is "<issuer> <subject>", which no role is named
    RETURN QUERY
    SELECT 'warning', 'oauth_line_without_map',
           pg_catalog.format('pg_hba.conf %s: an oauth line with neither delegate_ident_mapping=1 nor map=: PostgreSQL admits a login there only when the identity the validator reports equals the role name (pg_oauth reports the token''s issuer, a space and its subject), so its logins fail',
                             oauth._hba_line_text(h.line_number, h.type, h.database, h.user_name,
                                                  h.address, h.netmask, h.auth_method)),
           'Add delegate_ident_mapping=1 (oauth.role_map decides the role), or map=<name> with a pg_ident.conf map from "<issuer> <subject>" to roles'
      FROM pg_catalog.pg_hba_file_rules AS h
     WHERE h.auth_method = 'oauth' AND h.error IS NULL
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(h.options) AS o
                        WHERE o = 'delegate_ident_mapping=true'
                           OR pg_catalog.left(o, 4) = 'map=')
     ORDER BY h.line_number;

    RETURN QUERY
    SELECT 'warning', 'trust_local',
           pg_catalog.format('pg_hba.conf %s: token logins over the Unix socket (no TLS needed there); every local OS user can try them',
                             oauth._hba_line_text(h.line_number, h.type, h.database, h.user_name,
                                                  h.address, h.netmask, h.auth_method)),
           'Keep it only if local token logins are intended; otherwise use peer for local lines'
      FROM pg_catalog.pg_hba_file_rules AS h
     WHERE h.auth_method = 'trust' AND h.type = 'local'
     ORDER BY h.line_number;

    -- a superuser line with a real method above the token lines (a superuser
    -- reaching a token line is refused: nobody could administer the server
    -- when the validator cannot run)
    IF first_trust IS NOT NULL AND NOT EXISTS (
        SELECT 1
          FROM pg_catalog.pg_hba_file_rules AS h,
               LATERAL oauth._hba_user_roles(h.user_name) AS r
          JOIN pg_catalog.pg_authid AS a ON a.oid = r.roleid
         WHERE h.line_number < first_trust AND h.error IS NULL
           AND h.auth_method NOT IN ('trust', 'reject')
           AND a.rolsuper AND a.rolcanlogin)
    THEN
        RETURN QUERY SELECT 'risk', 'no_break_glass',
            pg_catalog.format('no pg_hba.conf line with a real method (peer, scram-sha-256, cert) admits a superuser above the first trust line (line %s): superusers reach the token lines, which refuse them, so nobody can log in to fix the server when the validator cannot run',
                              first_trust),
            'Add break-glass lines above the token lines, e.g. local all postgres peer and hostssl all postgres 10.0.0.0/8 scram-sha-256';
    END IF;

    -- replication: physical through a "replication" line, logical
    -- (replication=database) through any line matching a database
    RETURN QUERY
    SELECT 'risk', 'replication_via_trust',
           pg_catalog.format('pg_hba.conf %s: physical replication connections can come through a trust line; they never load session libraries, so without pg_oauth preloaded they stream every change with no credential',
                             oauth._hba_line_text(h.line_number, h.type, h.database, h.user_name,
                                                  h.address, h.netmask, h.auth_method)),
           'Give replication its own line with a real method (hostssl replication replicator 10.0.0.5/32 scram-sha-256) and remove replication from trust lines'
      FROM pg_catalog.pg_hba_file_rules AS h
     WHERE h.auth_method = 'trust' AND 'replication' = ANY (h.database)
     ORDER BY h.line_number;

    RETURN QUERY
    SELECT 'risk', 'replication_via_trust',
           pg_catalog.format('pg_hba.conf %s: roles that may replicate (REPLICATION or superuser) match this trust line: %s; logical replication connections (replication=database) match ordinary database lines',
                             oauth._hba_line_text(h.line_number, h.type, h.database, h.user_name,
                                                  h.address, h.netmask, h.auth_method),
                             oauth._name_list(repl.names)),
           'Scope the line to a group role without replication roles (+oauth_users), and give replication its own line with a real method'
      FROM pg_catalog.pg_hba_file_rules AS h,
           LATERAL (SELECT pg_catalog.array_agg(pg_catalog.quote_ident(a.rolname) ORDER BY a.rolname)
                      FROM oauth._hba_user_roles(h.user_name) AS r
                      JOIN pg_catalog.pg_authid AS a ON a.oid = r.roleid
                     WHERE a.rolcanlogin AND (a.rolreplication OR a.rolsuper)) AS repl(names)
     WHERE h.auth_method = 'trust' AND NOT 'replication' = ANY (h.database)
       AND repl.names IS NOT NULL
     ORDER BY h.line_number;

    SELECT pg_catalog.string_agg(pg_catalog.btrim(a), ', ') INTO setting
      FROM pg_catalog.regexp_split_to_table(pg_catalog.current_setting('listen_addresses'), ',') AS a
     WHERE pg_catalog.btrim(a) IN ('*', '0.0.0.0', '::');
    IF setting IS NOT NULL THEN
        RETURN QUERY
        SELECT 'warning', 'trust_from_anywhere',
               pg_catalog.format('pg_hba.conf %s: token logins from any address, and listen_addresses includes %s',
                                 oauth._hba_line_text(h.line_number, h.type, h.database, h.user_name,
                                                      h.address, h.netmask, h.auth_method),
                                 setting),
               'Restrict the line to the networks clients come from'
          FROM pg_catalog.pg_hba_file_rules AS h
         WHERE h.auth_method = 'trust'
           AND (h.address = 'all'
                OR (h.address IN ('0.0.0.0', '::') AND h.netmask IN ('0.0.0.0', '::')))
         ORDER BY h.line_number;
    END IF;

    -- the library and the guard --------------------------------------------------

    IF NOT oauth._lists_pg_oauth(pg_catalog.current_setting('shared_preload_libraries')) THEN
        RETURN QUERY SELECT 'risk', 'library_not_preloaded',
            'pg_oauth is not in shared_preload_libraries: trust lines are plain trust, no token is asked for',
            'Set shared_preload_libraries = ''pg_oauth'' and restart the server';
    END IF;

    -- PostgreSQL 18: the oauth method loads the validator in each backend, too
    -- late for pg_oauth's shared memory and workers (NULL before 18)
    IF oauth._lists_pg_oauth(pg_catalog.current_setting('oauth_validator_libraries', true))
       AND NOT oauth._lists_pg_oauth(pg_catalog.current_setting('shared_preload_libraries')) THEN
        RETURN QUERY SELECT 'risk', 'validator_not_preloaded',
            'oauth_validator_libraries names pg_oauth but shared_preload_libraries does not: every OAUTHBEARER login on an oauth line is refused (reason=validator_unavailable)',
            'Set shared_preload_libraries = ''pg_oauth'' and restart the server';
    END IF;

    -- the cluster-wide value (postgresql.conf, ALTER SYSTEM), not this session's
    SELECT f.setting INTO setting
      FROM pg_catalog.pg_file_settings AS f
     WHERE f.name = 'session_preload_libraries' AND f.applied
     ORDER BY f.seqno DESC LIMIT 1;
    IF NOT oauth._lists_pg_oauth(setting) AND first_trust IS NOT NULL THEN
        -- roles trust lines admit that have no ALTER ROLE ... SET of their own
        -- (a group's role settings do not apply to its members)
        SELECT pg_catalog.array_agg(DISTINCT pg_catalog.quote_ident(r.rolname)) INTO names
          FROM pg_catalog.pg_hba_file_rules AS h,
               LATERAL oauth._hba_user_roles(h.user_name) AS r
          JOIN pg_catalog.pg_authid AS a ON a.oid = r.roleid
         WHERE h.auth_method = 'trust' AND a.rolcanlogin
           AND NOT EXISTS (
               SELECT 1
                 FROM pg_catalog.pg_db_role_setting AS s,
                      pg_catalog.unnest(s.setconfig) AS c
                WHERE s.setrole = a.oid AND s.setdatabase = 0
                  AND c LIKE 'session\_preload\_libraries=%'
                  AND oauth._lists_pg_oauth(pg_catalog.substr(c, pg_catalog.strpos(c, '=') + 1)));
        IF names IS NOT NULL THEN
            RETURN QUERY SELECT 'risk', 'guard_missing',
                pg_catalog.format('session_preload_libraries does not include pg_oauth, cluster-wide or for these roles that trust lines admit: %s; if pg_oauth is ever missing from shared_preload_libraries, their trust-line sessions are not ended',
                                  oauth._name_list(names)),
                'Set session_preload_libraries = ''pg_oauth'' in postgresql.conf (or ALTER ROLE <role> SET session_preload_libraries = ''pg_oauth'' for each token role: a group''s setting does not apply to its members) and reload';
        END IF;
    END IF;

    -- TLS -------------------------------------------------------------------------

    IF pg_catalog.current_setting('ssl') <> 'on' THEN
        RETURN QUERY SELECT 'risk', 'ssl_off',
            'ssl is off: token logins over TCP are refused (pg_oauth.require_ssl) or would send the token in clear',
            'Set ssl = on with ssl_cert_file and ssl_key_file, and reload';
    ELSE
        FOR file IN
            SELECT s.name, s.setting FROM pg_catalog.pg_settings AS s
             WHERE s.name IN ('ssl_cert_file', 'ssl_key_file') ORDER BY s.name
        LOOP
            BEGIN
                -- opens the file and reads nothing: no key material leaves it
                IF pg_catalog.pg_read_binary_file(file.setting, 0, 0, true) IS NULL THEN
                    RETURN QUERY SELECT 'risk', 'ssl_files_missing',
                        pg_catalog.format('%s "%s" does not exist: the next reload or restart cannot load TLS', file.name, file.setting),
                        pg_catalog.format('Put the file in place or point %s at it (relative paths are relative to the data directory)', file.name);
                END IF;
            EXCEPTION WHEN OTHERS THEN
                RETURN QUERY SELECT 'risk', 'ssl_files_missing',
                    pg_catalog.format('%s "%s" cannot be read: %s', file.name, file.setting, SQLERRM),
                    pg_catalog.format('Make %s readable by the server''s OS user', file.name);
            END;
        END LOOP;
    END IF;

    setting := pg_catalog.lower(pg_catalog.current_setting('pg_oauth.require_ssl', true));
    IF setting IN ('off', 'false', 'no', '0') THEN
        RETURN QUERY SELECT 'risk', 'require_ssl_off',
            'pg_oauth.require_ssl is off: over TCP without TLS the token is asked for and sent in clear',
            'ALTER SYSTEM RESET pg_oauth.require_ssl; SELECT pg_reload_conf()';
    END IF;

    -- the configuration database --------------------------------------------------

    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_database AS d WHERE d.datname = config_db) THEN
        RETURN QUERY SELECT 'risk', 'config_database_missing',
            pg_catalog.format('pg_oauth.database is "%s", which does not exist: every token login is refused', config_db),
            pg_catalog.format('CREATE DATABASE %I and CREATE EXTENSION pg_oauth CASCADE in it, or point pg_oauth.database at the database that has the configuration (restart)', config_db);
    ELSIF NOT in_config_db THEN
        RETURN QUERY SELECT 'risk', 'not_configuration_database',
            pg_catalog.format('these checks ran in database "%s", but the configuration (oauth.role_map) is read from pg_oauth.database "%s": token roles from the role map were not checked',
                              pg_catalog.current_database(), config_db),
            pg_catalog.format('Run SELECT * FROM oauth.check_setup() (or pg-oauth doctor) in database "%s"', config_db);
    END IF;

    RETURN QUERY
    SELECT 'risk', 'config_database_owner',
           pg_catalog.format('database "%s" (pg_oauth.database) is owned by "%s", not a superuser: the owner can change database settings and objects that the superuser-run validator workers use',
                             d.datname, a.rolname),
           pg_catalog.format('ALTER DATABASE %I OWNER TO postgres (or another superuser); grant the former owner what it needs instead',
                             d.datname)
      FROM pg_catalog.pg_database AS d
      JOIN pg_catalog.pg_authid AS a ON a.oid = d.datdba
     WHERE d.datname = config_db AND NOT a.rolsuper;

    RETURN QUERY
    SELECT 'risk', 'schema_owner',
           pg_catalog.format('schema oauth in database "%s" is owned by "%s", not a superuser: its owner can drop and replace the extension''s tables and functions',
                             pg_catalog.current_database(), a.rolname),
           'ALTER SCHEMA oauth OWNER TO postgres (or another superuser)'
      FROM pg_catalog.pg_namespace AS n
      JOIN pg_catalog.pg_authid AS a ON a.oid = n.nspowner
     WHERE n.nspname = 'oauth' AND NOT a.rolsuper;

    -- token roles -------------------------------------------------------------------

    -- every role a trust line names or admits through +group, and every role
    -- a role_map rule yields literally (no \1 substitution)
    RETURN QUERY
    WITH token_roles(rolname, what, num) AS (
        SELECT r.rolname::text,
               CASE WHEN r.via = 'name' THEN 'named' ELSE 'member of ' || r.via END,
               h.line_number
          FROM pg_catalog.pg_hba_file_rules AS h,
               LATERAL oauth._hba_user_roles(h.user_name) AS r
         WHERE h.auth_method = 'trust' AND r.via <> 'all'
        UNION ALL
        SELECT m.role, 'role_map', m.id::integer
          FROM oauth.role_map AS m
         WHERE in_config_db AND pg_catalog.strpos(m.role, E'\\') = 0
    ), per_what AS (
        -- "member of +oauth_users on pg_hba.conf lines 7, 8"
        SELECT t.rolname,
               CASE WHEN t.what = 'role_map' THEN 'oauth.role_map rule'
                    ELSE t.what || ' on pg_hba.conf line' END
               || CASE WHEN pg_catalog.count(*) > 1 THEN 's ' ELSE ' ' END
               || pg_catalog.string_agg(t.num::text, ', ' ORDER BY t.num) AS source
          FROM token_roles AS t GROUP BY t.rolname, t.what
    ), per_role AS (
        SELECT w.rolname, pg_catalog.string_agg(w.source, '; ' ORDER BY w.source) AS sources
          FROM per_what AS w GROUP BY w.rolname
    )
    SELECT 'risk', 'privileged_token_role',
           pg_catalog.format('token role "%s" (%s) reaches %s%s; pg_oauth refuses its token logins, but a trust line does not when the library is missing',
                             p.rolname, p.sources, priv.privilege,
                             CASE WHEN priv.via = p.rolname THEN ''
                                  ELSE pg_catalog.format(' through "%s"', priv.via) END),
           CASE WHEN priv.via <> p.rolname
                THEN pg_catalog.format('REVOKE the membership that leads to %I from %I, or keep %I out of the token roles', priv.via, p.rolname, p.rolname)
                WHEN priv.privilege IN ('superuser', 'createrole', 'replication', 'bypassrls')
                THEN pg_catalog.format('ALTER ROLE %I NO%s, or keep it out of the token roles', p.rolname, pg_catalog.upper(priv.privilege))
                ELSE pg_catalog.format('REVOKE %I FROM %I, or keep it out of the token roles', priv.via, p.rolname) END
      FROM per_role AS p,
           LATERAL oauth.role_privileges(p.rolname::name) AS priv
     WHERE NOT priv.allowed
     ORDER BY p.rolname, priv.privilege;

    -- settings -----------------------------------------------------------------------

    setting := pg_catalog.concat_ws(', ',
                   NULLIF(pg_catalog.current_setting('pg_oauth.allow_privileges', true), ''),
                   CASE WHEN pg_catalog.lower(pg_catalog.current_setting('pg_oauth.allow_superuser', true))
                             IN ('on', 'true', 'yes', '1')
                        THEN 'superuser (pg_oauth.allow_superuser)' END);
    IF setting <> '' THEN
        RETURN QUERY SELECT 'warning', 'privileges_allowed',
            pg_catalog.format('token logins may use roles that reach: %s', setting),
            'Keep only what token logins need: ALTER SYSTEM RESET pg_oauth.allow_privileges (and pg_oauth.allow_superuser); SELECT pg_reload_conf()';
    END IF;

    IF pg_catalog.current_setting('pg_oauth.workers', true) = '0' THEN
        RETURN QUERY SELECT 'risk', 'no_workers',
            'pg_oauth.workers is 0: every token login is refused (validator_unavailable)',
            'Set pg_oauth.workers to 2 or more and restart the server';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION oauth.check_setup() FROM PUBLIC;
COMMENT ON FUNCTION oauth.check_setup() IS
    'Risks in the pg_hba.conf on disk, the settings and the token roles, each with its fix; no row: nothing found. Run it in the database named by pg_oauth.database';

------------------------------------------------------------------------------
-- Key refresh on demand: an issuer withdrew a key (or was compromised), and
-- tokens it signed must stop working now, not at the next scheduled refresh.
------------------------------------------------------------------------------

-- At commit of the calling transaction, every validator worker drops the keys
-- it holds for issuer (NULL: every issuer) and fetches them again before it
-- decides another login; the decision cache forgets everything (key_refresh.c).
CREATE FUNCTION oauth._request_key_refresh(issuer text) RETURNS void
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_request_key_refresh';
REVOKE ALL ON FUNCTION oauth._request_key_refresh(text) FROM PUBLIC;

-- Persisted documents of issuer fetched at or before this time are not
-- adopted again (the last committed refresh; -infinity: none since start).
CREATE FUNCTION oauth._keys_dropped_at(issuer text) RETURNS timestamptz
    LANGUAGE c VOLATILE STRICT
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_keys_dropped_at';
REVOKE ALL ON FUNCTION oauth._keys_dropped_at(text) FROM PUBLIC;

-- Run by each worker when a refresh was committed: drops the keys it holds
-- for these issuers (NULL: all) and fetches them again; a summary line.
CREATE FUNCTION oauth._refresh_keys_now(issuers text[]) RETURNS text
    LANGUAGE plpython3u VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
adapter = GD.get('pg_oauth_adapter')
if adapter is None:
    plpy.execute("SELECT oauth._adapter_load()")
    adapter = GD['pg_oauth_adapter']
return adapter.refresh_keys_now(None if issuers is None else list(issuers))
$$;
REVOKE ALL ON FUNCTION oauth._refresh_keys_now(text[]) FROM PUBLIC;

-- The DBA's call.  Deletes the issuer's persisted documents too, so nothing
-- adopts the old one again.  On a standby (read-only) only the workers of
-- that server refresh: run it on the primary and on each standby.
CREATE FUNCTION oauth.refresh_keys(issuer text DEFAULT NULL) RETURNS integer
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    issuers integer;
BEGIN
    IF NOT oauth._in_config_database() THEN
        RAISE EXCEPTION 'pg_oauth configuration lives in database "%" (pg_oauth.database), not in "%"',
              COALESCE(pg_catalog.current_setting('pg_oauth.database', true), 'postgres'),
              pg_catalog.current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Connect to that database to refresh the validator workers'' keys.';
    END IF;
    SELECT pg_catalog.count(*) INTO issuers FROM oauth.issuers i
     WHERE refresh_keys.issuer IS NULL OR i.issuer OPERATOR(pg_catalog.=) refresh_keys.issuer;
    IF refresh_keys.issuer IS NOT NULL AND issuers OPERATOR(pg_catalog.=) 0 THEN
        RAISE EXCEPTION 'issuer % is not in oauth.issuers', pg_catalog.quote_literal(refresh_keys.issuer)
            USING ERRCODE = 'undefined_object',
                  HINT = 'Name it exactly as the column oauth.issuers.issuer has it, or call oauth.refresh_keys() for every issuer.';
    END IF;
    PERFORM oauth._request_key_refresh(refresh_keys.issuer);
    IF NOT pg_catalog.pg_is_in_recovery() THEN
        DELETE FROM oauth.jwks_cache c
         WHERE refresh_keys.issuer IS NULL OR c.issuer OPERATOR(pg_catalog.=) refresh_keys.issuer;
    END IF;
    RETURN issuers;
END
$$;
REVOKE ALL ON FUNCTION oauth.refresh_keys(text) FROM PUBLIC;
COMMENT ON FUNCTION oauth.refresh_keys(text) IS
    'Make every validator worker drop the keys of an issuer (NULL: all) and fetch them again before the next login; returns how many issuers';

-- A DBA who empties the key cache by hand wants the same.
CREATE FUNCTION oauth._jwks_cache_deleted() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
        PERFORM oauth._request_key_refresh(NULL);
    ELSE
        PERFORM oauth._request_key_refresh(d.issuer)
           FROM (SELECT DISTINCT issuer FROM dropped) AS d;
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION oauth._jwks_cache_deleted() FROM PUBLIC;

CREATE TRIGGER jwks_cache_deleted
    AFTER DELETE ON oauth.jwks_cache
    REFERENCING OLD TABLE AS dropped
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._jwks_cache_deleted();
CREATE TRIGGER jwks_cache_truncated
    AFTER TRUNCATE ON oauth.jwks_cache
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._jwks_cache_deleted();
-- also under session_replication_role = replica
ALTER TABLE oauth.jwks_cache ENABLE ALWAYS TRIGGER jwks_cache_deleted;
ALTER TABLE oauth.jwks_cache ENABLE ALWAYS TRIGGER jwks_cache_truncated;
------------------------------------------------------------------------------
-- Large configurations: what changed since a worker loaded it, quiet worker
-- messages, and claims in RLS policies at the cost of a constant
------------------------------------------------------------------------------

-- Per-table change counters beside the version, so that a worker catching up
-- reads only what changed: issuers or rules again when they changed, and of
-- oauth.revocations only the rows added (id above the highest it holds) unless
-- rows were updated, deleted or truncated, or an insert brought ids that are not
-- above every id before (OVERRIDING SYSTEM VALUE, or transactions committing in
-- another order than they took their ids): then it reads them all again.
-- changes_counted moves with every statement these triggers see, as version does
-- with _config_trigger: when the two moved apart (a trigger disabled), or the
-- shared counter moved without either (config_guard.c saw a change no trigger
-- did), a worker reads everything again.
ALTER TABLE oauth.config_state
    ADD COLUMN changes_counted bigint NOT NULL DEFAULT 0,
    ADD COLUMN issuers_changes bigint NOT NULL DEFAULT 0,
    ADD COLUMN role_map_changes bigint NOT NULL DEFAULT 0,
    ADD COLUMN revocations_rewrites bigint NOT NULL DEFAULT 0,
    ADD COLUMN revocations_highest_id bigint NOT NULL DEFAULT 0;

CREATE FUNCTION oauth._config_table_changed() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    UPDATE oauth.config_state SET
        changes_counted = changes_counted OPERATOR(pg_catalog.+) 1,
        issuers_changes = issuers_changes OPERATOR(pg_catalog.+)
            (TG_TABLE_NAME OPERATOR(pg_catalog.=) 'issuers')::pg_catalog.int4,
        role_map_changes = role_map_changes OPERATOR(pg_catalog.+)
            (TG_TABLE_NAME OPERATOR(pg_catalog.=) 'role_map')::pg_catalog.int4,
        revocations_rewrites = revocations_rewrites OPERATOR(pg_catalog.+)
            (TG_TABLE_NAME OPERATOR(pg_catalog.=) 'revocations')::pg_catalog.int4;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION oauth._config_table_changed() FROM PUBLIC;

-- The UPDATE waits for any other writer of config_state and then sees its row:
-- the comparison is made against every insert committed before this one.
CREATE FUNCTION oauth._revocations_inserted() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    UPDATE oauth.config_state s SET
        changes_counted = s.changes_counted OPERATOR(pg_catalog.+) 1,
        revocations_rewrites = s.revocations_rewrites OPERATOR(pg_catalog.+) COALESCE(
            (n.lowest OPERATOR(pg_catalog.<=) s.revocations_highest_id)::pg_catalog.int4, 0),
        revocations_highest_id = GREATEST(s.revocations_highest_id, n.highest)
    FROM (SELECT pg_catalog.min(id) AS lowest, pg_catalog.max(id) AS highest
            FROM inserted) AS n;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION oauth._revocations_inserted() FROM PUBLIC;

CREATE TRIGGER issuers_counted
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.issuers
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._config_table_changed();
CREATE TRIGGER role_map_counted
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.role_map
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._config_table_changed();
CREATE TRIGGER revocations_counted
    AFTER UPDATE OR DELETE OR TRUNCATE ON oauth.revocations
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._config_table_changed();
CREATE TRIGGER revocations_inserted
    AFTER INSERT ON oauth.revocations
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._revocations_inserted();
-- as for the version (50-config-database.sql): replicated rows count too
ALTER TABLE oauth.issuers ENABLE ALWAYS TRIGGER issuers_counted;
ALTER TABLE oauth.role_map ENABLE ALWAYS TRIGGER role_map_counted;
ALTER TABLE oauth.revocations ENABLE ALWAYS TRIGGER revocations_counted;
ALTER TABLE oauth.revocations ENABLE ALWAYS TRIGGER revocations_inserted;

-- Moves (at commit, before the version) with every change that a statement
-- config_guard.c notes may have made behind the triggers' back: DDL, COPY,
-- TRUNCATE, drops. Workers then read everything again.
CREATE FUNCTION oauth._config_structure_version() RETURNS bigint
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_config_structure_version';
REVOKE ALL ON FUNCTION oauth._config_structure_version() FROM PUBLIC;

------------------------------------------------------------------------------
-- Worker messages (worker_log.c): pyhook's log lines without the PL/Python
-- CONTEXT lines, and one LOG line per configuration change for all workers
------------------------------------------------------------------------------

CREATE FUNCTION oauth._log(level text, message text) RETURNS void
    LANGUAGE c VOLATILE STRICT
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_log';
REVOKE ALL ON FUNCTION oauth._log(text, text) FROM PUBLIC;

CREATE FUNCTION oauth._log_config_applied(table_id bigint, version bigint, message text)
    RETURNS boolean
    LANGUAGE c VOLATILE STRICT
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_log_config_applied';
REVOKE ALL ON FUNCTION oauth._log_config_applied(bigint, bigint, text) FROM PUBLIC;

------------------------------------------------------------------------------
-- Claims as arrays, for "any of my groups" in RLS policies (session_state.c)
------------------------------------------------------------------------------

-- Same path syntax as oauth.claim().  An array claim gives its elements
-- (strings unquoted, other values as JSON text), any other claim a one-element
-- array; NULL when absent or not a token session.
CREATE FUNCTION oauth.claim_array(path text) RETURNS text[]
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_claim_array';
COMMENT ON FUNCTION oauth.claim_array(text) IS
    'A claim of this session''s token as text[] (an array claim''s elements; any other claim as one element); NULL when absent or not a token session';

-- true when an element of oauth.claim_array(path) equals value (byte for byte);
-- false otherwise, also when absent or not a token session.
CREATE FUNCTION oauth.claim_contains(path text, value text) RETURNS boolean
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_claim_contains';
COMMENT ON FUNCTION oauth.claim_contains(text, text) IS
    'Whether the claim at path (an array claim: one of its elements) equals value; false when absent or not a token session';
