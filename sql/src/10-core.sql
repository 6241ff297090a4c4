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
    -- plain http:// to any host (a test network); refused unless this is set
    -- (or, for a loopback host only, allow_loopback_http)
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
    LANGUAGE c STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_claims';
COMMENT ON FUNCTION oauth.claims() IS
    'Claims of the token this session logged in with; NULL for a session that did not log in with a token';

CREATE FUNCTION oauth.session(
        OUT issuer text, OUT subject text, OUT token_id text,
        OUT expires_at timestamptz, OUT login_role text)
    RETURNS record
    LANGUAGE c STABLE PARALLEL SAFE
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
COMMENT ON FUNCTION oauth.config_version() IS
    'The shared-memory configuration version: moved by every committed change of issuers, role_map or revocations; cached decisions and the workers'' loaded configuration are checked against it';

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
    LANGUAGE c STABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_claim';
COMMENT ON FUNCTION oauth.claim(text) IS
    'One claim of this session''s token by path (e.g. ''email'', ''realm_access.roles''); NULL when absent or not a token session';

------------------------------------------------------------------------------
-- The validator (PL/Python); the logic lives in the pyhook package
------------------------------------------------------------------------------

-- Loads pyhook from pg_oauth.python_path once per process.  Every PL/Python
-- function that needs it starts with the same two lines: each has globals of
-- its own, so GD (shared) holds the adapter and this function the set-up.
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
if 'pg_oauth_adapter' not in GD:
    plpy.execute("SELECT oauth._adapter_load()")
return [GD['pg_oauth_adapter'].validate(
    token, requested_role, database, client_addr, ssl, config_version)]
$$;
REVOKE ALL ON FUNCTION oauth.validate(text, text, text, inet, boolean, bigint) FROM PUBLIC;
COMMENT ON FUNCTION oauth.validate(text, text, text, inet, boolean, bigint) IS
    'The validator contract called by the pg_oauth workers: one decision per token';

-- Run by each worker when it starts: imports pyhook, loads configuration and keys.
CREATE FUNCTION oauth.warmup() RETURNS text
    LANGUAGE plpython3u VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
if 'pg_oauth_adapter' not in GD:
    plpy.execute("SELECT oauth._adapter_load()")
return GD['pg_oauth_adapter'].warmup()
$$;
REVOKE ALL ON FUNCTION oauth.warmup() FROM PUBLIC;
COMMENT ON FUNCTION oauth.warmup() IS
    'What a validator worker runs before its first login and when idle: load configuration changes, adopt newer persisted keys, fetch keys that are due; a one-line summary';

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

-- Reject a rule the validator could not use, at the time it is written: the
-- validator's own check (pyhook, RE2 syntax: matching time linear in the value).
CREATE FUNCTION oauth._role_map_check() RETURNS trigger
    LANGUAGE plpython3u
    SET search_path = pg_catalog, pg_temp
    AS $$
new = TD['new']
if 'pg_oauth_adapter' not in GD:
    plpy.execute("SELECT oauth._adapter_load()")
from pyhook.config import role_rule_problem
problem = role_rule_problem(new['pattern'], new['role'])
if problem is not None:
    plpy.error('invalid rule in oauth.role_map: %s' % problem,
               hint='Patterns use RE2 syntax (Python\'s, without backreferences, lookaround '
                    'or possessive quantifiers) and must match the whole claim value.')
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
