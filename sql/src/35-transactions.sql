
------------------------------------------------------------------------------
-- Behind a connection pooler: one token per transaction (transaction_identity.c)
------------------------------------------------------------------------------

-- In a gateway session (pg_oauth.gateway, set for the pooler's role by a
-- superuser): checks the token like a login and runs the rest of the
-- transaction as the role it admits, with its claims.  Any role may call it;
-- it refuses outside a gateway session.
CREATE FUNCTION oauth.authenticate(token text, role text DEFAULT NULL) RETURNS name
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_authenticate';
COMMENT ON FUNCTION oauth.authenticate(text, text) IS
    'In a gateway session (pg_oauth.gateway): check the token like a login and run the rest of the transaction as the role it admits (NULL: the one role the token allows), with its claims; COMMIT or ROLLBACK ends both. Pass the token as a bind parameter.';
