
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
if 'pg_oauth_adapter' not in GD:
    plpy.execute("SELECT oauth._adapter_load()")
return GD['pg_oauth_adapter'].refresh_keys_now(None if issuers is None else list(issuers))
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
