
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

-- check_setup's rows on gateway roles (60-setup-check.sql): a stolen gateway
-- password must give nothing by itself
CREATE FUNCTION oauth._check_gateways()
    RETURNS TABLE(severity text, check_name text, finding text, fix text)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
WITH marked AS (
    SELECT s.setrole, s.setdatabase
      FROM pg_catalog.pg_db_role_setting AS s,
           pg_catalog.unnest(s.setconfig) AS c
     WHERE pg_catalog.lower(pg_catalog.split_part(c, '=', 1)) = 'pg_oauth.gateway'
       AND pg_catalog.lower(pg_catalog.substr(c, pg_catalog.strpos(c, '=') + 1))
           IN ('on', 'true', 'yes', '1', 't', 'y')
), gateways AS (
    SELECT DISTINCT a.oid, a.rolname, a.rolsuper, a.rolcreaterole, a.rolbypassrls,
           a.rolreplication
      FROM marked AS m JOIN pg_catalog.pg_authid AS a ON a.oid = m.setrole
)
SELECT 'risk', 'gateway_privileged',
       pg_catalog.format('gateway role "%s" has %s: its password alone gives that',
                         g.rolname,
                         pg_catalog.concat_ws(', ',
                             CASE WHEN g.rolsuper THEN 'SUPERUSER' END,
                             CASE WHEN g.rolcreaterole THEN 'CREATEROLE' END,
                             CASE WHEN g.rolbypassrls THEN 'BYPASSRLS' END,
                             CASE WHEN g.rolreplication THEN 'REPLICATION' END)),
       pg_catalog.format('ALTER ROLE %I NOSUPERUSER NOCREATEROLE NOBYPASSRLS NOREPLICATION', g.rolname)
  FROM gateways AS g
 WHERE g.rolsuper OR g.rolcreaterole OR g.rolbypassrls OR g.rolreplication
UNION ALL
SELECT 'risk', 'gateway_is_member',
       pg_catalog.format('gateway role "%s" is a member of "%s": a gateway needs no membership in the roles it serves (oauth.authenticate switches without one), and its password alone could SET ROLE there in any session that is not a gateway''s',
                         g.rolname, r.rolname),
       pg_catalog.format('REVOKE %I FROM %I', r.rolname, g.rolname)
  FROM gateways AS g
  JOIN pg_catalog.pg_auth_members AS am ON am.member = g.oid
  JOIN pg_catalog.pg_authid AS r ON r.oid = am.roleid
UNION ALL
SELECT 'warning', 'gateway_has_rights',
       pg_catalog.format('gateway role "%s" %s %s in database "%s": nothing runs as the gateway in its sessions, but the rights are there for anything that is not one',
                         g.rolname,
                         CASE WHEN c.relowner = g.oid THEN 'owns' ELSE 'holds privileges on' END,
                         c.oid::pg_catalog.regclass, pg_catalog.current_database()),
       pg_catalog.format('REVOKE ALL ON %s FROM %I (or give it another owner)', c.oid::pg_catalog.regclass, g.rolname)
  FROM gateways AS g
  JOIN pg_catalog.pg_class AS c
    ON c.relowner = g.oid
       OR EXISTS (SELECT 1 FROM pg_catalog.aclexplode(c.relacl) AS x WHERE x.grantee = g.oid)
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
UNION ALL
SELECT 'risk', 'gateway_database_wide',
       pg_catalog.format('pg_oauth.gateway is on for every role in database "%s": every session there, the administrators'' too, runs only what oauth.authenticate() admits',
                         d.datname),
       pg_catalog.format('ALTER DATABASE %I RESET pg_oauth.gateway; ALTER ROLE <pooler role> SET pg_oauth.gateway = on', d.datname)
  FROM marked AS m JOIN pg_catalog.pg_database AS d ON d.oid = m.setdatabase
 WHERE m.setrole = 0
$$;
REVOKE ALL ON FUNCTION oauth._check_gateways() FROM PUBLIC;
