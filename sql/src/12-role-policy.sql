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
