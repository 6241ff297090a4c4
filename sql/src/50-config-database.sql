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
-- Executable by PUBLIC on purpose: the write guard below runs as whoever writes,
-- and must reach its refusal for any role; it tells nothing pg_oauth.database,
-- a setting anyone can read, does not.
COMMENT ON FUNCTION oauth._in_config_database() IS
    'Whether this is the database named by pg_oauth.database (the write guard asks it for every writer; executable by PUBLIC on purpose)';

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
