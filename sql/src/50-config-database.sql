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

CREATE FUNCTION oauth._require_config_database() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF NOT oauth._in_config_database() THEN
        RAISE EXCEPTION 'pg_oauth configuration lives in database "%" (pg_oauth.database), not in "%"',
              COALESCE(pg_catalog.current_setting('pg_oauth.database', true), 'postgres'),
              pg_catalog.current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Connect to that database to change issuers, role_map or revocations. '
                         'In this database the session functions work: oauth.claims(), oauth.claim(), oauth.session().';
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION oauth._require_config_database() FROM PUBLIC;

CREATE TRIGGER issuers_config_database
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.issuers
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._require_config_database();
CREATE TRIGGER role_map_config_database
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.role_map
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._require_config_database();
CREATE TRIGGER revocations_config_database
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.revocations
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._require_config_database();
CREATE TRIGGER jwks_cache_config_database
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.jwks_cache
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._require_config_database();

-- Rows applied by logical replication (or under session_replication_role =
-- replica) fire only ALWAYS triggers: the version must move for them too.
ALTER TABLE oauth.issuers ENABLE ALWAYS TRIGGER issuers_changed;
ALTER TABLE oauth.issuers ENABLE ALWAYS TRIGGER issuers_config_database;
ALTER TABLE oauth.role_map ENABLE ALWAYS TRIGGER role_map_changed;
ALTER TABLE oauth.role_map ENABLE ALWAYS TRIGGER role_map_config_database;
ALTER TABLE oauth.role_map ENABLE ALWAYS TRIGGER role_map_check;
ALTER TABLE oauth.revocations ENABLE ALWAYS TRIGGER revocations_changed;
ALTER TABLE oauth.revocations ENABLE ALWAYS TRIGGER revocations_config_database;
ALTER TABLE oauth.jwks_cache ENABLE ALWAYS TRIGGER jwks_cache_config_database;

-- Only superusers write pg_oauth's tables, whatever grants say: a role with
-- pg_write_all_data (or an UPDATE grant by mistake) could otherwise plant a
-- signing key of its own in oauth.jwks_cache, which the workers adopt, or
-- rewrite the audit log.  Token logins refuse such roles too.
CREATE FUNCTION oauth._require_superuser() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF NOT coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles AS r
                      WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER), false) THEN
        RAISE EXCEPTION 'only superusers may write %.%', TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION oauth._require_superuser() FROM PUBLIC;

CREATE TRIGGER issuers_superuser_only
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.issuers
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._require_superuser();
CREATE TRIGGER role_map_superuser_only
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.role_map
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._require_superuser();
CREATE TRIGGER revocations_superuser_only
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.revocations
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._require_superuser();
CREATE TRIGGER config_state_superuser_only
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.config_state
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._require_superuser();
CREATE TRIGGER jwks_cache_superuser_only
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.jwks_cache
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._require_superuser();
CREATE TRIGGER audit_log_superuser_only
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._require_superuser();
ALTER TABLE oauth.issuers ENABLE ALWAYS TRIGGER issuers_superuser_only;
ALTER TABLE oauth.role_map ENABLE ALWAYS TRIGGER role_map_superuser_only;
ALTER TABLE oauth.revocations ENABLE ALWAYS TRIGGER revocations_superuser_only;
ALTER TABLE oauth.config_state ENABLE ALWAYS TRIGGER config_state_superuser_only;
ALTER TABLE oauth.jwks_cache ENABLE ALWAYS TRIGGER jwks_cache_superuser_only;
ALTER TABLE oauth.audit_log ENABLE ALWAYS TRIGGER audit_log_superuser_only;
