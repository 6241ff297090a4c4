-- standby.sql: 1.0 -> next (standby_follow.c); check_setup is replaced whole at assembly
CREATE FUNCTION oauth._standby_followed(OUT version bigint, OUT looked_at timestamptz)
    RETURNS record
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_standby_followed';
REVOKE ALL ON FUNCTION oauth._standby_followed() FROM PUBLIC;
COMMENT ON FUNCTION oauth._standby_followed() IS
    'On a standby: the replayed configuration version its housekeeper last applied (workers reloaded, sessions of replayed revocations ended) and when it last looked';

-- check_setup's rows on a standby: nothing on a primary
CREATE FUNCTION oauth._check_standby()
    RETURNS TABLE(severity text, check_name text, finding text, fix text)
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    applied bigint;
    looked timestamptz;
    replayed bigint;
BEGIN
    IF NOT pg_catalog.pg_is_in_recovery() THEN
        RETURN;
    END IF;
    SELECT f.version, f.looked_at INTO applied, looked FROM oauth._standby_followed() AS f;
    SELECT s.version INTO replayed FROM oauth.config_state AS s;
    IF looked IS NULL OR looked OPERATOR(pg_catalog.<)
            (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) interval '5 seconds') THEN
        RETURN QUERY SELECT 'risk', 'standby_not_following',
            CASE WHEN looked IS NULL
                 THEN 'this standby''s housekeeper has not looked at the replayed configuration: revocations, rules, issuers and keys changed on the primary may not apply here'
                 ELSE pg_catalog.format('this standby''s housekeeper last looked at the replayed configuration at %s: revocations, rules, issuers and keys changed on the primary since may not apply here', looked)
            END,
            'Check that pg_oauth is in shared_preload_libraries and that the pg_oauth housekeeper runs (pg_stat_activity, backend_type ''pg_oauth housekeeper''); its errors are in the server log';
        RETURN;
    END IF;
    RETURN QUERY SELECT 'info', 'standby_follows_primary',
        pg_catalog.format('this standby''s workers follow the primary''s configuration: configuration version %s applied (replayed: %s), looked at %s',
                          applied, replayed, looked),
        'Nothing to do: changes committed on the primary apply here within a second of their replay';
END
$$;
REVOKE ALL ON FUNCTION oauth._check_standby() FROM PUBLIC;
