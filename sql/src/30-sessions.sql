
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

CREATE FUNCTION oauth._end_sessions(issuer text, subject text, token_id text,
                                    issued_before timestamptz DEFAULT NULL)
    RETURNS integer
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_end_sessions';
REVOKE ALL ON FUNCTION oauth._end_sessions(text, text, text, timestamptz) FROM PUBLIC;

-- Record a revocation (checked at every login) and end the live sessions it
-- covers when the transaction commits; a rollback, or a ROLLBACK TO SAVEPOINT
-- past the call, ends none.  Returns how many live sessions it covers now:
-- those are ended at commit.  issued_before (last, so that 1.0's positional
-- calls still work): only tokens issued before it, or without iat.
CREATE FUNCTION oauth.revoke(token_id text DEFAULT NULL, subject text DEFAULT NULL,
                             issuer text DEFAULT NULL, expires_at timestamptz DEFAULT NULL,
                             reason text DEFAULT NULL, issued_before timestamptz DEFAULT NULL)
    RETURNS integer
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF token_id IS NULL AND subject IS NULL AND issuer IS NULL THEN
        RAISE EXCEPTION 'oauth.revoke needs a token_id, a subject or an issuer';
    END IF;
    INSERT INTO oauth.revocations (issuer, subject, token_id, reason, expires_at, issued_before)
         VALUES (revoke.issuer, revoke.subject, revoke.token_id, revoke.reason, revoke.expires_at,
                 revoke.issued_before);
    RETURN oauth._end_sessions(revoke.issuer, revoke.subject, revoke.token_id, revoke.issued_before);
END
$$;
REVOKE ALL ON FUNCTION oauth.revoke(text, text, text, timestamptz, text, timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION oauth.revoke(text, text, text, timestamptz, text, timestamptz) IS
    'Revoke by token id, subject and/or issuer (until expires_at, NULL: forever; with issued_before, only tokens issued before it or without iat) and end the live sessions it covers when the transaction commits; returns how many it covers now';
