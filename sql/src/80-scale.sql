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
    LANGUAGE c STABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_claim_array';
COMMENT ON FUNCTION oauth.claim_array(text) IS
    'A claim of this session''s token as text[] (an array claim''s elements; any other claim as one element); NULL when absent or not a token session';

-- true when an element of oauth.claim_array(path) equals value (byte for byte);
-- false otherwise, also when absent or not a token session.
CREATE FUNCTION oauth.claim_contains(path text, value text) RETURNS boolean
    LANGUAGE c STABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_claim_contains';
COMMENT ON FUNCTION oauth.claim_contains(text, text) IS
    'Whether the claim at path (an array claim: one of its elements) equals value; false when absent or not a token session';
