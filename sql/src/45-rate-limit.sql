
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
