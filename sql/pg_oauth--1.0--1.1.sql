-- pg_oauth 1.0 -> 1.1: ALTER EXTENSION pg_oauth UPDATE (docs/upgrades.md)
\echo Use "ALTER EXTENSION pg_oauth UPDATE TO '1.1'" to load this file. \quit

-- A hot standby follows its primary (standby_follow.c, 90-standby.sql)
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

-- oauth.revoke ends the sessions it covers only when the (sub)transaction commits
COMMENT ON FUNCTION oauth.revoke(text, text, text, timestamptz, text) IS
    'Revoke by token id, subject and/or issuer (until expires_at, NULL: forever) and end the live sessions it covers when the transaction commits; returns how many it covers now';

-- check_setup: role_map rules the validator skips (role_map_rule_skipped), by
-- the same pyhook check as the role_map trigger.
-- Why the validator cannot use a role_map rule (NULL: it can): pyhook's own
-- check, the one the role_map trigger runs when a rule is written.  Rules
-- stored before 1.1 (or with the trigger disabled) may still fail it.
CREATE FUNCTION oauth._role_rule_problem(pattern text, role text) RETURNS text
    LANGUAGE plpython3u
    SET search_path = pg_catalog, pg_temp
    AS $$
if 'pg_oauth_adapter' not in GD:
    plpy.execute("SELECT oauth._adapter_load()")
from pyhook.config import role_rule_problem
return role_rule_problem(pattern, role)
$$;
REVOKE ALL ON FUNCTION oauth._role_rule_problem(text, text) FROM PUBLIC;

-- check_setup reads each pg_hba.conf line and its text from oauth._hba_lines, which
-- replaces oauth._hba_line_text (dropped below)
-- The lines of the pg_hba.conf on disk with one method (trust: pg_oauth's token
-- lines; oauth: PostgreSQL 18's), each with its text as written in pg_hba.conf
-- syntax, address and mask as two fields: "line 7: hostssl all +oauth_users
-- 0.0.0.0 0.0.0.0 trust".  What each finding about a line starts from.
CREATE FUNCTION oauth._hba_lines(method text)
    RETURNS TABLE(line_number integer, type text, database text[], user_name text[],
                  address text, netmask text, options text[], line text)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
SELECT h.line_number, h.type, h.database, h.user_name, h.address, h.netmask, h.options,
       pg_catalog.format('line %s: %s',
           h.line_number,
           pg_catalog.concat_ws(' ', h.type,
                                pg_catalog.array_to_string(h.database, ','),
                                pg_catalog.array_to_string(h.user_name, ','),
                                h.address, h.netmask, h.auth_method))
  FROM pg_catalog.pg_hba_file_rules AS h
 WHERE h.auth_method = method AND h.error IS NULL
$$;
REVOKE ALL ON FUNCTION oauth._hba_lines(text) FROM PUBLIC;

-- check_setup: a configuration database closed to connections and what its owner can
-- do (60-setup-check.sql); on a standby, whether it follows its primary (90-standby.sql)
CREATE OR REPLACE FUNCTION oauth.check_setup()
    RETURNS TABLE(severity text, check_name text, finding text, fix text)
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    -- the placeholder or default when the library is not loaded
    config_db text := coalesce(NULLIF(
                          pg_catalog.current_setting('pg_oauth.database', true), ''),
                          'postgres');
    in_config_db boolean := pg_catalog.current_database() = config_db;
    first_trust integer;
    setting text;
    names text[];
    file record;
BEGIN
    SELECT pg_catalog.min(h.line_number) INTO first_trust
      FROM pg_catalog.pg_hba_file_rules AS h WHERE h.auth_method = 'trust';

    -- pg_hba.conf ---------------------------------------------------------------

    RETURN QUERY
    SELECT 'risk', 'hba_file_error',
           pg_catalog.format('pg_hba.conf line %s: %s', h.line_number, h.error),
           'Fix the line: a reload keeps the previous pg_hba.conf and a restart fails until then'
      FROM pg_catalog.pg_hba_file_rules AS h
     WHERE h.error IS NOT NULL
     ORDER BY h.line_number;

    -- PostgreSQL 18's oauth lines are token lines too (pg_oauth as their validator)
    IF first_trust IS NULL AND NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_hba_file_rules AS h WHERE h.auth_method = 'oauth') THEN
        RETURN QUERY SELECT 'warning', 'no_token_lines',
            'pg_hba.conf has no trust line: pg_oauth acts only on trust lines, so no token login can succeed',
            'Add a token line, e.g. hostssl all +oauth_users 0.0.0.0/0 trust, below the break-glass lines';
    END IF;

    RETURN QUERY
    SELECT 'risk', 'trust_for_all_users',
           pg_catalog.format('pg_hba.conf %s: a trust line for all users; if pg_oauth is ever missing from shared_preload_libraries it admits any role, superusers included, with no credential',
                             h.line),
           'Scope token lines to a group role: replace all by +oauth_users (CREATE ROLE oauth_users NOLOGIN; GRANT oauth_users TO each token role); for provisioning''s first logins use a regular expression of the names it gives (PostgreSQL 16 and later), or keep all after reject lines for the privileged roles (docs/provisioning.md)'
      FROM oauth._hba_lines('trust') AS h
     WHERE 'all' = ANY (h.user_name)
     ORDER BY h.line_number;

    RETURN QUERY
    SELECT 'risk', 'trust_without_tls',
           pg_catalog.format('pg_hba.conf %s: a %s trust line matches TCP connections without TLS; pg_oauth refuses token logins there (pg_oauth.require_ssl), but without the library it is plain trust over an unencrypted connection',
                             h.line, h.type),
           'Use hostssl for token lines'
      FROM oauth._hba_lines('trust') AS h
     WHERE h.type IN ('host', 'hostnossl', 'hostnogssenc')
     ORDER BY h.line_number;

    RETURN QUERY
    SELECT 'risk', 'oauth_without_tls',
           pg_catalog.format('pg_hba.conf %s: a %s oauth line matches TCP connections without TLS; the client sends its bearer token before pg_oauth can refuse the connection (pg_oauth.require_ssl), so the token crosses the network in clear',
                             h.line, h.type),
           'Use hostssl for oauth lines (and sslmode=verify-full on the clients)'
      FROM oauth._hba_lines('oauth') AS h
     WHERE h.type IN ('host', 'hostnossl', 'hostnogssenc')
     ORDER BY h.line_number;

    -- PostgreSQL 18's oauth lines on another validator: PostgreSQL itself refuses
    -- a line whose validator oauth_validator_libraries does not list, a line
    -- without validator= when that setting lists several (both hba_file_error),
    -- and every oauth line while it is empty; a valid line always shows its
    -- validator in options, given or the one library listed
    RETURN QUERY
    SELECT 'risk', 'oauth_line_other_validator',
           pg_catalog.format('pg_hba.conf %s: the validator of this oauth line is "%s", not pg_oauth: its logins skip pg_oauth''s policy (superusers refused, oauth.role_map, the role policy, revocation, session limits, the audit log)',
                             h.line, v.validator),
           'Add validator=pg_oauth to the line (pg_oauth in oauth_validator_libraries); keep another validator only on lines it is meant to decide, and keep superusers off them'
      FROM oauth._hba_lines('oauth') AS h,
           LATERAL (SELECT pg_catalog.substr(o, 11)
                      FROM pg_catalog.unnest(h.options) AS o
                     WHERE pg_catalog.left(o, 10) = 'validator=') AS v(validator)
     WHERE v.validator !~ '(^|/)pg_oauth(\.so)?$'
     ORDER BY h.line_number;

    -- without a map PostgreSQL compares the validator's identity with the role
    -- name; pg_oauth's is "<issuer> <subject>", which no role is named
    RETURN QUERY
    SELECT 'warning', 'oauth_line_without_map',
           pg_catalog.format('pg_hba.conf %s: an oauth line with neither delegate_ident_mapping=1 nor map=: PostgreSQL admits a login there only when the identity the validator reports equals the role name (pg_oauth reports the token''s issuer, a space and its subject), so its logins fail',
                             h.line),
           'Add delegate_ident_mapping=1 (oauth.role_map decides the role), or map=<name> with a pg_ident.conf map from "<issuer> <subject>" to roles'
      FROM oauth._hba_lines('oauth') AS h
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(h.options) AS o
                        WHERE o = 'delegate_ident_mapping=true'
                           OR pg_catalog.left(o, 4) = 'map=')
     ORDER BY h.line_number;

    RETURN QUERY
    SELECT 'warning', 'trust_local',
           pg_catalog.format('pg_hba.conf %s: token logins over the Unix socket (no TLS needed there); every local OS user can try them',
                             h.line),
           'Keep it only if local token logins are intended; otherwise use peer for local lines'
      FROM oauth._hba_lines('trust') AS h
     WHERE h.type = 'local'
     ORDER BY h.line_number;

    -- a superuser line with a real method above the token lines (a superuser
    -- reaching a token line is refused: nobody could administer the server
    -- when the validator cannot run)
    IF first_trust IS NOT NULL AND NOT EXISTS (
        SELECT 1
          FROM pg_catalog.pg_hba_file_rules AS h,
               LATERAL oauth._hba_user_roles(h.user_name) AS r
          JOIN pg_catalog.pg_authid AS a ON a.oid = r.roleid
         WHERE h.line_number < first_trust AND h.error IS NULL
           AND h.auth_method NOT IN ('trust', 'reject')
           AND a.rolsuper AND a.rolcanlogin)
    THEN
        RETURN QUERY SELECT 'risk', 'no_break_glass',
            pg_catalog.format('no pg_hba.conf line with a real method (peer, scram-sha-256, cert) admits a superuser above the first trust line (line %s): superusers reach the token lines, which refuse them, so nobody can log in to fix the server when the validator cannot run',
                              first_trust),
            'Add break-glass lines above the token lines, e.g. local all postgres peer and hostssl all postgres 10.0.0.0/8 scram-sha-256';
    END IF;

    -- replication: physical through a "replication" line, logical
    -- (replication=database) through any line matching a database
    RETURN QUERY
    SELECT 'risk', 'replication_via_trust',
           pg_catalog.format('pg_hba.conf %s: physical replication connections can come through a trust line; they never load session libraries, so without pg_oauth preloaded they stream every change with no credential',
                             h.line),
           'Give replication its own line with a real method (hostssl replication replicator 10.0.0.5/32 scram-sha-256) and remove replication from trust lines'
      FROM oauth._hba_lines('trust') AS h
     WHERE 'replication' = ANY (h.database)
     ORDER BY h.line_number;

    RETURN QUERY
    SELECT 'risk', 'replication_via_trust',
           pg_catalog.format('pg_hba.conf %s: roles that may replicate (REPLICATION or superuser) match this trust line: %s; logical replication connections (replication=database) match ordinary database lines',
                             h.line, oauth._name_list(repl.names)),
           'Scope the line to a group role without replication roles (+oauth_users), and give replication its own line with a real method'
      FROM oauth._hba_lines('trust') AS h,
           LATERAL (SELECT pg_catalog.array_agg(pg_catalog.quote_ident(a.rolname) ORDER BY a.rolname)
                      FROM oauth._hba_user_roles(h.user_name) AS r
                      JOIN pg_catalog.pg_authid AS a ON a.oid = r.roleid
                     WHERE a.rolcanlogin AND (a.rolreplication OR a.rolsuper)) AS repl(names)
     WHERE NOT 'replication' = ANY (h.database) AND repl.names IS NOT NULL
     ORDER BY h.line_number;

    SELECT pg_catalog.string_agg(pg_catalog.btrim(a), ', ') INTO setting
      FROM pg_catalog.regexp_split_to_table(pg_catalog.current_setting('listen_addresses'), ',') AS a
     WHERE pg_catalog.btrim(a) IN ('*', '0.0.0.0', '::');
    IF setting IS NOT NULL THEN
        RETURN QUERY
        SELECT 'warning', 'trust_from_anywhere',
               pg_catalog.format('pg_hba.conf %s: token logins from any address, and listen_addresses includes %s',
                                 h.line, setting),
               'Restrict the line to the networks clients come from'
          FROM oauth._hba_lines('trust') AS h
         WHERE h.address = 'all'
            OR (h.address IN ('0.0.0.0', '::') AND h.netmask IN ('0.0.0.0', '::'))
         ORDER BY h.line_number;
    END IF;

    -- the library and the guard --------------------------------------------------

    IF NOT oauth._lists_pg_oauth(pg_catalog.current_setting('shared_preload_libraries')) THEN
        RETURN QUERY SELECT 'risk', 'library_not_preloaded',
            'pg_oauth is not in shared_preload_libraries: trust lines are plain trust, no token is asked for',
            'Set shared_preload_libraries = ''pg_oauth'' and restart the server';
    END IF;

    -- PostgreSQL 18: the oauth method loads the validator in each backend, too
    -- late for pg_oauth's shared memory and workers (NULL before 18)
    IF oauth._lists_pg_oauth(pg_catalog.current_setting('oauth_validator_libraries', true))
       AND NOT oauth._lists_pg_oauth(pg_catalog.current_setting('shared_preload_libraries')) THEN
        RETURN QUERY SELECT 'risk', 'validator_not_preloaded',
            'oauth_validator_libraries names pg_oauth but shared_preload_libraries does not: every OAUTHBEARER login on an oauth line is refused (reason=validator_unavailable)',
            'Set shared_preload_libraries = ''pg_oauth'' and restart the server';
    END IF;

    -- the cluster-wide value (postgresql.conf, ALTER SYSTEM), not this session's
    SELECT f.setting INTO setting
      FROM pg_catalog.pg_file_settings AS f
     WHERE f.name = 'session_preload_libraries' AND f.applied
     ORDER BY f.seqno DESC LIMIT 1;
    IF NOT oauth._lists_pg_oauth(setting) AND first_trust IS NOT NULL THEN
        -- roles trust lines admit that have no ALTER ROLE ... SET of their own
        -- (a group's role settings do not apply to its members)
        SELECT pg_catalog.array_agg(DISTINCT pg_catalog.quote_ident(r.rolname)) INTO names
          FROM pg_catalog.pg_hba_file_rules AS h,
               LATERAL oauth._hba_user_roles(h.user_name) AS r
          JOIN pg_catalog.pg_authid AS a ON a.oid = r.roleid
         WHERE h.auth_method = 'trust' AND a.rolcanlogin
           AND NOT EXISTS (
               SELECT 1
                 FROM pg_catalog.pg_db_role_setting AS s,
                      pg_catalog.unnest(s.setconfig) AS c
                WHERE s.setrole = a.oid AND s.setdatabase = 0
                  AND c LIKE 'session\_preload\_libraries=%'
                  AND oauth._lists_pg_oauth(pg_catalog.substr(c, pg_catalog.strpos(c, '=') + 1)));
        IF names IS NOT NULL THEN
            RETURN QUERY SELECT 'risk', 'guard_missing',
                pg_catalog.format('session_preload_libraries does not include pg_oauth, cluster-wide or for these roles that trust lines admit: %s; if pg_oauth is ever missing from shared_preload_libraries, their trust-line sessions are not ended',
                                  oauth._name_list(names)),
                'Set session_preload_libraries = ''pg_oauth'' in postgresql.conf (or ALTER ROLE <role> SET session_preload_libraries = ''pg_oauth'' for each token role: a group''s setting does not apply to its members) and reload';
        END IF;
    END IF;

    -- TLS -------------------------------------------------------------------------

    IF pg_catalog.current_setting('ssl') <> 'on' THEN
        RETURN QUERY SELECT 'risk', 'ssl_off',
            'ssl is off: token logins over TCP are refused (pg_oauth.require_ssl) or would send the token in clear',
            'Set ssl = on with ssl_cert_file and ssl_key_file, and reload';
    ELSE
        FOR file IN
            SELECT s.name, s.setting FROM pg_catalog.pg_settings AS s
             WHERE s.name IN ('ssl_cert_file', 'ssl_key_file') ORDER BY s.name
        LOOP
            BEGIN
                -- opens the file and reads nothing: no key material leaves it
                IF pg_catalog.pg_read_binary_file(file.setting, 0, 0, true) IS NULL THEN
                    RETURN QUERY SELECT 'risk', 'ssl_files_missing',
                        pg_catalog.format('%s "%s" does not exist: the next reload or restart cannot load TLS', file.name, file.setting),
                        pg_catalog.format('Put the file in place or point %s at it (relative paths are relative to the data directory)', file.name);
                END IF;
            EXCEPTION WHEN OTHERS THEN
                RETURN QUERY SELECT 'risk', 'ssl_files_missing',
                    pg_catalog.format('%s "%s" cannot be read: %s', file.name, file.setting, SQLERRM),
                    pg_catalog.format('Make %s readable by the server''s OS user', file.name);
            END;
        END LOOP;
    END IF;

    setting := pg_catalog.lower(pg_catalog.current_setting('pg_oauth.require_ssl', true));
    IF setting IN ('off', 'false', 'no', '0') THEN
        RETURN QUERY SELECT 'risk', 'require_ssl_off',
            'pg_oauth.require_ssl is off: over TCP without TLS the token is asked for and sent in clear',
            'ALTER SYSTEM RESET pg_oauth.require_ssl; SELECT pg_reload_conf()';
    END IF;

    -- the configuration database --------------------------------------------------

    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_database AS d WHERE d.datname = config_db) THEN
        RETURN QUERY SELECT 'risk', 'config_database_missing',
            pg_catalog.format('pg_oauth.database is "%s", which does not exist: every token login is refused', config_db),
            pg_catalog.format('CREATE DATABASE %I and CREATE EXTENSION pg_oauth CASCADE in it, or point pg_oauth.database at the database that has the configuration (restart)', config_db);
    ELSIF NOT in_config_db THEN
        RETURN QUERY SELECT 'risk', 'not_configuration_database',
            pg_catalog.format('these checks ran in database "%s", but the configuration (oauth.role_map) is read from pg_oauth.database "%s": token roles from the role map were not checked',
                              pg_catalog.current_database(), config_db),
            pg_catalog.format('Run SELECT * FROM oauth.check_setup() (or pg-oauth doctor) in database "%s"', config_db);
    END IF;

    -- the validator workers connect regardless (BGWORKER_BYPASS_ALLOWCONN)
    RETURN QUERY
    SELECT 'risk', 'config_database_closed',
           pg_catalog.format('database "%s" (pg_oauth.database) does not allow connections: token logins still work, but nobody can connect to change the configuration or revoke a token',
                             d.datname),
           pg_catalog.format('ALTER DATABASE %I ALLOW_CONNECTIONS true', d.datname)
      FROM pg_catalog.pg_database AS d
     WHERE d.datname = config_db AND NOT d.datallowconn;

    RETURN QUERY
    SELECT 'risk', 'config_database_owner',
           pg_catalog.format('database "%s" (pg_oauth.database) is owned by "%s", not a superuser: the owner can change database settings and objects that the superuser-run validator workers use, close it to connections, and rename or drop it (then, from the next restart, every token login is refused validator_unavailable)',
                             d.datname, a.rolname),
           pg_catalog.format('ALTER DATABASE %I OWNER TO postgres (or another superuser); grant the former owner what it needs instead',
                             d.datname)
      FROM pg_catalog.pg_database AS d
      JOIN pg_catalog.pg_authid AS a ON a.oid = d.datdba
     WHERE d.datname = config_db AND NOT a.rolsuper;

    RETURN QUERY
    SELECT 'risk', 'schema_owner',
           pg_catalog.format('schema oauth in database "%s" is owned by "%s", not a superuser: its owner can drop and replace the extension''s tables and functions',
                             pg_catalog.current_database(), a.rolname),
           'ALTER SCHEMA oauth OWNER TO postgres (or another superuser)'
      FROM pg_catalog.pg_namespace AS n
      JOIN pg_catalog.pg_authid AS a ON a.oid = n.nspowner
     WHERE n.nspname = 'oauth' AND NOT a.rolsuper;

    -- token roles -------------------------------------------------------------------

    -- every role a trust line names or admits through +group, and every role
    -- a role_map rule yields literally (no \1 substitution)
    RETURN QUERY
    WITH token_roles(rolname, what, num) AS (
        SELECT r.rolname::text,
               CASE WHEN r.via = 'name' THEN 'named' ELSE 'member of ' || r.via END,
               h.line_number
          FROM pg_catalog.pg_hba_file_rules AS h,
               LATERAL oauth._hba_user_roles(h.user_name) AS r
         WHERE h.auth_method = 'trust' AND r.via <> 'all'
        UNION ALL
        SELECT m.role, 'role_map', m.id::integer
          FROM oauth.role_map AS m
         WHERE in_config_db AND pg_catalog.strpos(m.role, E'\\') = 0
    ), per_what AS (
        -- "member of +oauth_users on pg_hba.conf lines 7, 8"
        SELECT t.rolname,
               CASE WHEN t.what = 'role_map' THEN 'oauth.role_map rule'
                    ELSE t.what || ' on pg_hba.conf line' END
               || CASE WHEN pg_catalog.count(*) > 1 THEN 's ' ELSE ' ' END
               || pg_catalog.string_agg(t.num::text, ', ' ORDER BY t.num) AS source
          FROM token_roles AS t GROUP BY t.rolname, t.what
    ), per_role AS (
        SELECT w.rolname, pg_catalog.string_agg(w.source, '; ' ORDER BY w.source) AS sources
          FROM per_what AS w GROUP BY w.rolname
    )
    SELECT 'risk', 'privileged_token_role',
           pg_catalog.format('token role "%s" (%s) reaches %s%s; pg_oauth refuses its token logins, but a trust line does not when the library is missing',
                             p.rolname, p.sources, priv.privilege,
                             CASE WHEN priv.via = p.rolname THEN ''
                                  ELSE pg_catalog.format(' through "%s"', priv.via) END),
           CASE WHEN priv.via <> p.rolname
                THEN pg_catalog.format('REVOKE the membership that leads to %I from %I, or keep %I out of the token roles', priv.via, p.rolname, p.rolname)
                WHEN priv.privilege IN ('superuser', 'createrole', 'replication', 'bypassrls')
                THEN pg_catalog.format('ALTER ROLE %I NO%s, or keep it out of the token roles', p.rolname, pg_catalog.upper(priv.privilege))
                ELSE pg_catalog.format('REVOKE %I FROM %I, or keep it out of the token roles', priv.via, p.rolname) END
      FROM per_role AS p,
           LATERAL oauth.role_privileges(p.rolname::name) AS priv
     WHERE NOT priv.allowed
     ORDER BY p.rolname, priv.privilege;

    -- role_map rules the workers skip (a warning: their logins fail closed,
    -- refused role_not_allowed); pyhook not importable is a finding, not an error
    IF in_config_db THEN
        BEGIN
            RETURN QUERY
            SELECT 'warning', 'role_map_rule_skipped',
                   pg_catalog.format('oauth.role_map rule %s (issuer "%s", claim "%s", pattern "%s", role "%s") cannot be used by the validator and is skipped: %s; the logins it should admit are refused role_not_allowed',
                                     m.id, m.issuer, m.claim, m.pattern, m.role, p.problem),
                   pg_catalog.format('Rewrite it in RE2 syntax (no backreferences, lookaround or possessive quantifiers: spell the alternatives out): UPDATE oauth.role_map SET pattern = ''...'' WHERE id = %s; or DELETE FROM oauth.role_map WHERE id = %s',
                                     m.id, m.id)
              FROM oauth.role_map AS m,
                   LATERAL oauth._role_rule_problem(m.pattern, m.role) AS p(problem)
             WHERE p.problem IS NOT NULL
             ORDER BY m.id;
        EXCEPTION WHEN OTHERS THEN
            RETURN QUERY SELECT 'warning', 'role_map_unchecked',
                pg_catalog.format('the oauth.role_map rules could not be checked: the validator''s Python package did not load (%s)', SQLERRM),
                'Install pyhook where pg_oauth.python_path points (make install, or the package) for the server''s Python, and restart';
        END;
    END IF;

    -- settings -----------------------------------------------------------------------

    setting := pg_catalog.concat_ws(', ',
                   NULLIF(pg_catalog.current_setting('pg_oauth.allow_privileges', true), ''),
                   CASE WHEN pg_catalog.lower(pg_catalog.current_setting('pg_oauth.allow_superuser', true))
                             IN ('on', 'true', 'yes', '1')
                        THEN 'superuser (pg_oauth.allow_superuser)' END);
    IF setting <> '' THEN
        RETURN QUERY SELECT 'warning', 'privileges_allowed',
            pg_catalog.format('token logins may use roles that reach: %s', setting),
            'Keep only what token logins need: ALTER SYSTEM RESET pg_oauth.allow_privileges (and pg_oauth.allow_superuser); SELECT pg_reload_conf()';
    END IF;

    IF pg_catalog.current_setting('pg_oauth.workers', true) = '0' THEN
        RETURN QUERY SELECT 'risk', 'no_workers',
            'pg_oauth.workers is 0: every token login is refused (validator_unavailable)',
            'Set pg_oauth.workers to 2 or more and restart the server';
    END IF;

    -- a hot standby: does it follow its primary's configuration (90-standby.sql)
    RETURN QUERY SELECT * FROM oauth._check_standby();
    RETURN QUERY SELECT * FROM oauth._check_gateways();
    RETURN QUERY SELECT * FROM oauth._check_provisioning();
END
$$;
REVOKE ALL ON FUNCTION oauth.check_setup() FROM PUBLIC;
COMMENT ON FUNCTION oauth.check_setup() IS
    'Risks in the pg_hba.conf on disk, the settings and the token roles, each with its fix; no row: nothing found (a standby adds one row saying whether it follows its primary). Run it in the database named by pg_oauth.database';

DROP FUNCTION oauth._hba_line_text(integer, text, text[], text[], text, text, text);

-- issue 19, item 8: plain http to a loopback issuer is a per-issuer choice.
-- Issuers that fetched keys over http://127.0.0.1 (or localhost, [::1]) without
-- allow_insecure_http are refused jwks_unavailable after this until a DBA sets it.
ALTER TABLE oauth.issuers
    ADD COLUMN allow_loopback_http boolean NOT NULL DEFAULT false;

-- issue 19, item 7: role_map patterns are RE2's (linear-time matching); the
-- trigger asks pyhook, which the validator uses, whether a rule is usable.
-- Existing rules RE2 cannot run are skipped with a warning when the workers load
-- them, and oauth.check_setup() names them.
-- Reject a rule the validator could not use, at the time it is written: the
-- validator's own check (pyhook, RE2 syntax: matching time linear in the value).
CREATE OR REPLACE FUNCTION oauth._role_map_check() RETURNS trigger
    LANGUAGE plpython3u
    SET search_path = pg_catalog, pg_temp
    AS $$
new = TD['new']
if 'pg_oauth_adapter' not in GD:
    plpy.execute("SELECT oauth._adapter_load()")
from pyhook.config import role_rule_problem
problem = role_rule_problem(new['pattern'], new['role'])
if problem is not None:
    plpy.error('invalid rule in oauth.role_map: %s' % problem,
               hint='Patterns use RE2 syntax (Python\'s, without backreferences, lookaround '
                    'or possessive quantifiers) and must match the whole claim value.')
if not new['claim'] or new['claim'].strip() != new['claim']:
    plpy.error('claim path must be a non-empty claim name or dotted path without surrounding spaces')
return None
$$;
REVOKE ALL ON FUNCTION oauth._role_map_check() FROM PUBLIC;

-- The PL/Python functions that call the adapter load it with the same two lines
-- as the role_map check (the set-up itself stays in oauth._adapter_load()).
-- CREATE OR REPLACE keeps their privileges and comments.
CREATE OR REPLACE FUNCTION oauth.validate(
        token text, requested_role text, database text, client_addr inet,
        ssl boolean, config_version bigint)
    RETURNS TABLE(ok boolean, reason text, detail text, allowed_roles text[],
                  issuer text, subject text, token_id text,
                  expires_at timestamptz, claims jsonb,
                  kid text, alg text, key_cache text, max_sessions integer)
    LANGUAGE plpython3u VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
if 'pg_oauth_adapter' not in GD:
    plpy.execute("SELECT oauth._adapter_load()")
return [GD['pg_oauth_adapter'].validate(
    token, requested_role, database, client_addr, ssl, config_version)]
$$;

CREATE OR REPLACE FUNCTION oauth.warmup() RETURNS text
    LANGUAGE plpython3u VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
if 'pg_oauth_adapter' not in GD:
    plpy.execute("SELECT oauth._adapter_load()")
return GD['pg_oauth_adapter'].warmup()
$$;

CREATE OR REPLACE FUNCTION oauth.explain(
        token text, role text, database text DEFAULT current_database(),
        client_addr inet DEFAULT NULL)
    RETURNS TABLE(step integer, name text, outcome text, input text, detail text)
    LANGUAGE plpython3u VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
if 'pg_oauth_adapter' not in GD:
    plpy.execute("SELECT oauth._adapter_load()")
return GD['pg_oauth_adapter'].explain(
    token, role, database, None if client_addr is None else str(client_addr))
$$;

CREATE OR REPLACE FUNCTION oauth._refresh_keys_now(issuers text[]) RETURNS text
    LANGUAGE plpython3u VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
if 'pg_oauth_adapter' not in GD:
    plpy.execute("SELECT oauth._adapter_load()")
return GD['pg_oauth_adapter'].refresh_keys_now(None if issuers is None else list(issuers))
$$;

-- Comments on functions 1.0 shipped without
COMMENT ON FUNCTION oauth._in_config_database() IS
    'Whether this is the database named by pg_oauth.database (the write guard asks it for every writer; executable by PUBLIC on purpose)';
COMMENT ON FUNCTION oauth.config_version() IS
    'The shared-memory configuration version: moved by every committed change of issuers, role_map or revocations; cached decisions and the workers'' loaded configuration are checked against it';
COMMENT ON FUNCTION oauth.warmup() IS
    'What a validator worker runs before its first login and when idle: load configuration changes, adopt newer persisted keys, fetch keys that are due; a one-line summary';
COMMENT ON FUNCTION oauth.stats_reset() IS
    'Reset the counters of oauth.stats and the histograms of oauth.stats_histogram (every issuer) to zero';

-- Revocation for incidents: issued_before revokes only the tokens issued (iat)
-- before a moment (and those without iat), so fresh tokens still log in.  The
-- column comes last, as in a fresh install; oauth.revoke and oauth._end_sessions
-- get a last parameter with a default, so 1.0's calls still work.  DROP and
-- CREATE: privileges a DBA granted on oauth.revoke must be granted again
-- (docs/upgrades.md).
ALTER TABLE oauth.revocations ADD COLUMN issued_before timestamptz;
COMMENT ON COLUMN oauth.revocations.issued_before IS
    'Only tokens issued (iat) before this moment are revoked, and tokens without iat; NULL: every token';

DROP FUNCTION oauth.revoke(text, text, text, timestamptz, text);
DROP FUNCTION oauth._end_sessions(text, text, text);

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


-- Behind a connection pooler: one token per transaction (35-transactions.sql)
CREATE FUNCTION oauth.authenticate(token text, role text DEFAULT NULL) RETURNS name
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_authenticate';
COMMENT ON FUNCTION oauth.authenticate(text, text) IS
    'In a gateway session (pg_oauth.gateway): check the token like a login and run the rest of the transaction as the role it admits (NULL: the one role the token allows), with its claims; COMMIT or ROLLBACK ends both. Pass the token as a bind parameter.';

-- oauth.authenticate() calls are audited with a kind of their own; the rows
-- already there keep NULL (no rewrite of a large table, nothing to backfill);
-- so are the changes provisioning makes to roles (55-provisioning.sql)
ALTER TABLE oauth.audit_log
    ADD COLUMN kind text CHECK (kind IN ('login', 'transaction', 'provisioning')),
    ADD COLUMN change text;
ALTER TABLE oauth.audit_log ALTER COLUMN kind SET DEFAULT 'login';
COMMENT ON TABLE oauth.audit_log IS
    'Token login attempts, oauth.authenticate() calls and the changes provisioning made to roles (kind), never the token; kept for pg_oauth.audit_retention';

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

-- Worker health for monitoring (monitoring/): states and request counts,
-- never a token (last_error is the worker's own failure).
GRANT EXECUTE ON FUNCTION oauth.workers() TO pg_read_all_stats;

-- Key age per enabled issuer whose keys come over HTTP, for monitoring: when
-- its keys were last fetched (NULL: never, or emptied by oauth.refresh_keys()),
-- the refresh interval they are held to (pyhook's IssuerConfig.refresh_interval:
-- the document's max-age within jwks_refresh_min..max, else jwks_refresh), the
-- age past which they are no longer used, and how many keys the document holds.
-- The view reads oauth.jwks_cache with its owner's rights: the monitoring role
-- sees the times, never the key material.
CREATE VIEW oauth.key_freshness AS
SELECT i.issuer,
       c.fetched_at,
       CASE WHEN c.max_age IS NULL THEN i.jwks_refresh
            ELSE LEAST(GREATEST(c.max_age, i.jwks_refresh_min), i.jwks_refresh_max)
       END AS refresh_interval,
       i.jwks_max_stale AS max_stale,
       pg_catalog.jsonb_array_length(
           CASE WHEN pg_catalog.jsonb_typeof(c.jwks -> 'keys') = 'array'
                THEN c.jwks -> 'keys' END) AS keys
  FROM oauth.issuers AS i
  LEFT JOIN oauth.jwks_cache AS c ON c.issuer = i.issuer
 WHERE i.enabled AND i.jwks IS NULL;
REVOKE ALL ON oauth.key_freshness FROM PUBLIC;
GRANT SELECT ON oauth.key_freshness TO pg_read_all_stats;
COMMENT ON VIEW oauth.key_freshness IS
    'Enabled issuers whose keys come over HTTP: when the keys were last fetched (NULL: never), the refresh interval they are held to, their max staleness, and how many keys';

-- The claims reach parallel workers (parallel_identity.c): the claim functions
-- are PARALLEL SAFE, so a policy USING (tenant = oauth.claim('tenant_id')) keeps
-- its parallel scans
ALTER FUNCTION oauth.claims() PARALLEL SAFE;
ALTER FUNCTION oauth.session() PARALLEL SAFE;
ALTER FUNCTION oauth.claim(text) PARALLEL SAFE;
ALTER FUNCTION oauth.claim_array(text) PARALLEL SAFE;
ALTER FUNCTION oauth.claim_contains(text, text) PARALLEL SAFE;

-- Roles from the identity provider (55-provisioning.sql)
------------------------------------------------------------------------------
-- Roles from the identity provider (docs/provisioning.md): a token's role made
-- on its first login, its memberships in group roles kept in step with the
-- token's groups, and offboarding of roles not seen for a while.
--
-- The validator worker (a superuser, in this database) makes the changes, in
-- the transaction that validates the token, so the role exists when the
-- backend reads pg_authid after the worker's answer.  pg_oauth touches only
-- the roles it created (oauth.provisioned_roles, by oid) and the memberships
-- it granted (oauth.provisioned_memberships).
------------------------------------------------------------------------------

CREATE TABLE oauth.provisioning (
    issuer              text PRIMARY KEY REFERENCES oauth.issuers (issuer)
                        ON UPDATE CASCADE ON DELETE CASCADE,
    -- the new role's name: the claim's value fully matching role_pattern gives
    -- role_name (\1 substitutions allowed), as in oauth.role_map
    role_claim          text NOT NULL DEFAULT 'sub',
    role_pattern        text NOT NULL,
    role_name           text NOT NULL DEFAULT '\1',
    lowercase           boolean NOT NULL DEFAULT true,
    -- the claim holding the token's groups (NULL: memberships are not synced),
    -- and the most groups a token may carry
    groups_claim        text,
    max_groups          integer NOT NULL DEFAULT 200
                        CHECK (max_groups BETWEEN 0 AND 100000),
    -- the template of a new role: always LOGIN, never any privilege
    inherit             boolean NOT NULL DEFAULT true,
    connection_limit    integer NOT NULL DEFAULT -1 CHECK (connection_limit >= -1),
    -- roles every new role joins (the group the token lines of pg_hba.conf name)
    member_of           text[] NOT NULL DEFAULT '{}',
    -- roles not seen for this long are disabled (NOLOGIN) or dropped
    offboard_after      interval CHECK (offboard_after >= '1 minute'::interval),
    offboard_action     text NOT NULL DEFAULT 'nologin'
                        CHECK (offboard_action IN ('nologin', 'drop')),
    -- a revocation of the whole subject (oauth.revoke) disables its roles too
    disable_on_revoke   boolean NOT NULL DEFAULT true,
    enabled             boolean NOT NULL DEFAULT true,
    comment             text,
    CHECK (role_claim <> '' AND role_claim = btrim(role_claim)),
    CHECK (groups_claim IS NULL OR (groups_claim <> '' AND groups_claim = btrim(groups_claim)))
);
COMMENT ON TABLE oauth.provisioning IS
    'Per issuer: how a token''s role is named and made on its first login, which claim holds its groups, and when unused roles are offboarded';

CREATE TABLE oauth.group_roles (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    issuer          text NOT NULL REFERENCES oauth.provisioning (issuer)
                    ON UPDATE CASCADE ON DELETE CASCADE,
    group_pattern   text NOT NULL,
    role            text NOT NULL,
    comment         text
);
CREATE INDEX group_roles_issuer_idx ON oauth.group_roles (issuer);
COMMENT ON TABLE oauth.group_roles IS
    'Which group role a token''s group gives: a group fully matching group_pattern gives role (an existing NOLOGIN role without privileges; \1 substitutions allowed)';

-- What pg_oauth created and granted: it never touches anything else.
CREATE TABLE oauth.provisioned_roles (
    role            oid PRIMARY KEY,
    rolname         name NOT NULL,
    issuer          text NOT NULL,
    subject         text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen       timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz,
    disabled_reason text CHECK (disabled_reason IN ('inactive', 'revoked'))
);
CREATE INDEX provisioned_roles_subject_idx ON oauth.provisioned_roles (issuer, subject);
COMMENT ON TABLE oauth.provisioned_roles IS
    'Roles pg_oauth created (by oid): for which issuer and subject, when last seen, and whether pg_oauth disabled them';

CREATE TABLE oauth.provisioned_memberships (
    member          oid NOT NULL,
    group_role      oid NOT NULL,
    source          text NOT NULL CHECK (source IN ('template', 'group')),
    granted_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (member, group_role)
);
COMMENT ON TABLE oauth.provisioned_memberships IS
    'Memberships pg_oauth granted (by oid): from the policy''s member_of (template) or the token''s groups (group); only these are ever revoked';

REVOKE ALL ON oauth.provisioning, oauth.group_roles, oauth.provisioned_roles,
    oauth.provisioned_memberships FROM PUBLIC;

CREATE TRIGGER provisioning_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.provisioning
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._config_trigger();
CREATE TRIGGER group_roles_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.group_roles
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._config_trigger();

-- Patterns are checked when written, by the validator's own code (RE2).
CREATE FUNCTION oauth._provisioning_check() RETURNS trigger
    LANGUAGE plpython3u
    SET search_path = pg_catalog, pg_temp
    AS $$
new = TD['new']
if 'pg_oauth_adapter' not in GD:
    plpy.execute("SELECT oauth._adapter_load()")
from pyhook.provisioning import policy_row_problem
problem = policy_row_problem(TD['table_name'], new)
if problem is not None:
    plpy.error('invalid row in oauth.%s: %s' % (TD['table_name'], problem),
               hint='Patterns use RE2 syntax and must match the whole value; see docs/provisioning.md.')
return None
$$;
REVOKE ALL ON FUNCTION oauth._provisioning_check() FROM PUBLIC;
CREATE TRIGGER provisioning_check
    BEFORE INSERT OR UPDATE ON oauth.provisioning
    FOR EACH ROW EXECUTE FUNCTION oauth._provisioning_check();
CREATE TRIGGER group_roles_check
    BEFORE INSERT OR UPDATE ON oauth.group_roles
    FOR EACH ROW EXECUTE FUNCTION oauth._provisioning_check();

-- The write guard every pg_oauth table has (oauth._guard_write,
-- 50-config-database.sql): the policies are written only in pg_oauth.database,
-- and all four tables only by superusers, whatever grants say (a row of
-- oauth.provisioned_roles hands a role to a subject).  Rows applied by logical
-- replication fire only ALWAYS triggers.
CREATE TRIGGER provisioning_guard
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.provisioning
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._guard_write('configuration');
CREATE TRIGGER group_roles_guard
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.group_roles
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._guard_write('configuration');
CREATE TRIGGER provisioned_roles_guard
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.provisioned_roles
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._guard_write();
CREATE TRIGGER provisioned_memberships_guard
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.provisioned_memberships
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._guard_write();
ALTER TABLE oauth.provisioning ENABLE ALWAYS TRIGGER provisioning_changed;
ALTER TABLE oauth.provisioning ENABLE ALWAYS TRIGGER provisioning_check;
ALTER TABLE oauth.provisioning ENABLE ALWAYS TRIGGER provisioning_guard;
ALTER TABLE oauth.group_roles ENABLE ALWAYS TRIGGER group_roles_changed;
ALTER TABLE oauth.group_roles ENABLE ALWAYS TRIGGER group_roles_check;
ALTER TABLE oauth.group_roles ENABLE ALWAYS TRIGGER group_roles_guard;
ALTER TABLE oauth.provisioned_roles ENABLE ALWAYS TRIGGER provisioned_roles_guard;
ALTER TABLE oauth.provisioned_memberships ENABLE ALWAYS TRIGGER provisioned_memberships_guard;

SELECT pg_catalog.pg_extension_config_dump('oauth.provisioning', '');
SELECT pg_catalog.pg_extension_config_dump('oauth.group_roles', '');
SELECT pg_catalog.pg_extension_config_dump('oauth.group_roles_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('oauth.provisioned_roles', '');
SELECT pg_catalog.pg_extension_config_dump('oauth.provisioned_memberships', '');

-- Why a name may not become a role pg_oauth creates (NULL: it may).  pyhook
-- checks the same first; this is the last word, next to the CREATE ROLE.
CREATE FUNCTION oauth._provision_name_problem(name text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
SELECT CASE
    WHEN name IS NULL OR name OPERATOR(pg_catalog.=) '' THEN 'the name is empty'
    WHEN pg_catalog.octet_length(name) OPERATOR(pg_catalog.>) 63
        THEN pg_catalog.format('the name is %s bytes long; role names hold at most 63',
                               pg_catalog.octet_length(name))
    WHEN name OPERATOR(pg_catalog.!~) '^[A-Za-z0-9_][A-Za-z0-9_.@+-]*$'
        THEN 'the name has characters other than letters, digits and _ . @ + - (or starts with one of . @ + -)'
    WHEN pg_catalog.lower(name) OPERATOR(pg_catalog.~~) 'pg\_%'
        THEN 'names starting with pg_ are reserved for PostgreSQL''s own roles'
    WHEN pg_catalog.lower(name) OPERATOR(pg_catalog.=) ANY ('{public,none,all,current_user,current_role,session_user,user,replication,samerole,samegroup}'::text[])
        THEN 'the name is a reserved word of PostgreSQL or pg_hba.conf'
END
$$;
REVOKE ALL ON FUNCTION oauth._provision_name_problem(text) FROM PUBLIC;

-- A value from a token (a subject) as it may appear in a log line or a
-- refusal: control characters as ?, as the audit lines of audit_log.c print them.
CREATE FUNCTION oauth._provision_printable(value text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
SELECT pg_catalog.regexp_replace(value, '[[:cntrl:]]', '?', 'g')
$$;
REVOKE ALL ON FUNCTION oauth._provision_printable(text) FROM PUBLIC;

-- Why a role may not be one a provisioned role is made a member of (NULL: it
-- may): it must exist, not log in, not be PostgreSQL's own, not be a role
-- pg_oauth created, not be a member (at any depth) of a role that can log in
-- or that pg_oauth created, and reach no privilege token logins refuse by
-- default (whatever pg_oauth.allow_privileges says: provisioning never grants
-- one).
CREATE FUNCTION oauth._provision_target_problem(target text) RETURNS text
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    r record;
    p record;
    via name;
BEGIN
    SELECT a.oid, a.rolcanlogin, a.rolsuper, a.rolcreaterole, a.rolreplication, a.rolbypassrls
      INTO r FROM pg_catalog.pg_authid AS a WHERE a.rolname OPERATOR(pg_catalog.=) target;
    IF NOT FOUND THEN
        RETURN 'the role does not exist';
    END IF;
    IF pg_catalog.lower(target) OPERATOR(pg_catalog.~~) 'pg\_%' THEN
        RETURN 'it is one of PostgreSQL''s own roles';
    END IF;
    IF r.rolcanlogin THEN
        RETURN 'it can log in (group roles are NOLOGIN: membership would let one user act as another)';
    END IF;
    IF EXISTS (SELECT 1 FROM oauth.provisioned_roles AS m
                WHERE m.role OPERATOR(pg_catalog.=) r.oid OR m.rolname OPERATOR(pg_catalog.=) target) THEN
        RETURN 'it is a role pg_oauth created for a user';
    END IF;
    -- its members could SET ROLE to (or, with ADMIN, grant themselves) that role
    WITH RECURSIVE up(oid) AS (
        SELECT am.roleid FROM pg_catalog.pg_auth_members AS am
         WHERE am.member OPERATOR(pg_catalog.=) r.oid
        UNION
        SELECT am.roleid FROM pg_catalog.pg_auth_members AS am
          JOIN up ON am.member OPERATOR(pg_catalog.=) up.oid
    )
    SELECT a.rolname INTO via
      FROM up JOIN pg_catalog.pg_authid AS a ON a.oid OPERATOR(pg_catalog.=) up.oid
     WHERE a.rolcanlogin
        OR EXISTS (SELECT 1 FROM oauth.provisioned_roles AS m WHERE m.role OPERATOR(pg_catalog.=) a.oid)
     ORDER BY a.rolname LIMIT 1;
    IF FOUND THEN
        RETURN pg_catalog.format('it is a member of %s, a role that can log in or that pg_oauth created (membership would let one user act as another)',
                                 pg_catalog.quote_ident(via));
    END IF;
    IF r.rolsuper OR r.rolcreaterole OR r.rolreplication OR r.rolbypassrls THEN
        RETURN 'it has a privileged attribute (superuser, createrole, replication or bypassrls)';
    END IF;
    SELECT * INTO p FROM oauth.role_privileges(target::name) LIMIT 1;
    IF FOUND THEN
        RETURN pg_catalog.format('it reaches privilege %s (through %s)', p.privilege, p.via);
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION oauth._provision_target_problem(text) FROM PUBLIC;

-- One audit row per change (kind 'provisioning'), and one server log line.
CREATE FUNCTION oauth._provision_audit(change_reason text, issuer text, subject text,
        role text, change text) RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- the server log always gets the line; the table as pg_oauth.audit_log says
    IF COALESCE(pg_catalog.current_setting('pg_oauth.audit_log', true), 'on')
           OPERATOR(pg_catalog.=) 'on' THEN
        INSERT INTO oauth.audit_log (at, outcome, reason, issuer, subject, role, kind, change)
        VALUES (pg_catalog.clock_timestamp(), 'ok', change_reason, issuer, subject, role,
                'provisioning', change);
    END IF;
    PERFORM oauth._log('log', pg_catalog.format('pg_oauth: %s (issuer %s, subject %s)',
                                                change, oauth._provision_printable(issuer),
                                                oauth._provision_printable(subject)));
END
$$;
REVOKE ALL ON FUNCTION oauth._provision_audit(text, text, text, text, text) FROM PUBLIC;

-- How stale last_seen may get: a login moves it only when it is older than
-- this (an hour, or a quarter of offboard_after when that is shorter), and
-- oauth.offboard() waits as much again past offboard_after, so a role that
-- logs in is never taken as unseen.
CREATE FUNCTION oauth._provision_seen_every(offboard_after interval) RETURNS interval
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
SELECT LEAST(interval '1 hour',
             COALESCE(offboard_after OPERATOR(pg_catalog./) 4::pg_catalog.float8, interval '1 hour'))
$$;
REVOKE ALL ON FUNCTION oauth._provision_seen_every(interval) FROM PUBLIC;

-- What a token's login needs done to its role, and (apply) doing it: one row
-- per step.  action: refuse (target: the reason code), create, enable, join
-- (a member_of role), grant, revoke, skip (a group role that may not be
-- granted), keep (nothing to do).  mapped: oauth.role_map admits the role as
-- well, so a role pg_oauth did not create is the DBA's to keep, not a refusal.
-- Called by the validator worker with apply on a primary; without apply on a
-- standby and by oauth.explain().  lock_timeout: the advisory key below is one
-- any role that connects here can hold; a worker never waits for it long.
CREATE FUNCTION oauth._provision(issuer text, subject text, role text, groups text[],
        mapped boolean, apply boolean)
    RETURNS TABLE(action text, target text, detail text)
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    SET lock_timeout = '2s'
    AS $$
DECLARE
    pol oauth.provisioning;
    problem text;
    rid oid;
    canlogin boolean;
    managed oauth.provisioned_roles;
    g text;
    goid oid;
    wanted oid[] := '{}';
    m record;
    created boolean := false;
BEGIN
    SELECT * INTO pol FROM oauth.provisioning AS p
     WHERE p.issuer OPERATOR(pg_catalog.=) _provision.issuer AND p.enabled;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'refuse', 'provisioning_forbidden',
            'no enabled provisioning policy for this issuer (oauth.provisioning)';
        RETURN;
    END IF;
    problem := oauth._provision_name_problem(role);
    IF problem IS NOT NULL THEN
        RETURN QUERY SELECT 'refuse', 'provisioning_forbidden',
            pg_catalog.format('role %s cannot be provisioned: %s', pg_catalog.quote_ident(role), problem);
        RETURN;
    END IF;
    -- two first logins of one user: the second waits, then finds the role made
    IF apply THEN
        PERFORM pg_catalog.pg_advisory_xact_lock(1868658037, pg_catalog.hashtext(role));
    END IF;

    SELECT a.oid, a.rolcanlogin INTO rid, canlogin
      FROM pg_catalog.pg_authid AS a WHERE a.rolname OPERATOR(pg_catalog.=) role;
    IF FOUND THEN
        -- by oid and name: a record restored into another cluster, or of a role
        -- renamed since, names no role pg_oauth manages
        SELECT * INTO managed FROM oauth.provisioned_roles AS r
         WHERE r.role OPERATOR(pg_catalog.=) rid AND r.rolname OPERATOR(pg_catalog.=) _provision.role;
        IF NOT FOUND AND mapped THEN
            RETURN QUERY SELECT 'keep', role,
                'oauth.role_map admits this role and pg_oauth did not create it: left as it is';
            RETURN;
        END IF;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'refuse', 'provisioning_forbidden',
                pg_catalog.format('role %s exists and pg_oauth did not create it: a token''s name never takes over a role pg_oauth does not manage (map it in oauth.role_map instead)',
                                  pg_catalog.quote_ident(role));
            RETURN;
        END IF;
        IF managed.issuer OPERATOR(pg_catalog.<>) _provision.issuer
           OR managed.subject OPERATOR(pg_catalog.<>) _provision.subject THEN
            RETURN QUERY SELECT 'refuse', 'provisioning_forbidden',
                pg_catalog.format('role %s was provisioned for another subject (issuer %s, subject %s): a reused name never inherits another user''s role',
                                  pg_catalog.quote_ident(role), oauth._provision_printable(managed.issuer),
                                  oauth._provision_printable(managed.subject));
            RETURN;
        END IF;
        IF NOT canlogin THEN
            IF managed.disabled_reason IS NULL THEN
                -- NOLOGIN set by a DBA: theirs to lift; the login is refused
                RETURN QUERY SELECT 'keep', role, 'NOLOGIN was set by a DBA: left as it is';
                RETURN;
            END IF;
            RETURN QUERY SELECT 'enable', role,
                pg_catalog.format('pg_oauth disabled it (%s) on %s; a valid token enables it again',
                                  managed.disabled_reason, managed.disabled_at);
            IF apply THEN
                EXECUTE pg_catalog.format('ALTER ROLE %I LOGIN', role);
                UPDATE oauth.provisioned_roles AS r SET disabled_at = NULL, disabled_reason = NULL,
                       last_seen = pg_catalog.now()
                 WHERE r.role OPERATOR(pg_catalog.=) rid;
                PERFORM oauth._provision_audit('enabled', issuer, subject, role,
                    pg_catalog.format('enabled role %s again', pg_catalog.quote_ident(role)));
            END IF;
        ELSIF apply AND managed.last_seen OPERATOR(pg_catalog.<)
                (pg_catalog.now() OPERATOR(pg_catalog.-) oauth._provision_seen_every(pol.offboard_after)) THEN
            UPDATE oauth.provisioned_roles AS r SET last_seen = pg_catalog.now()
             WHERE r.role OPERATOR(pg_catalog.=) rid;
        END IF;
    ELSE
        created := true;
        RETURN QUERY SELECT 'create', role,
            pg_catalog.format('LOGIN %s, connection limit %s%s',
                CASE WHEN pol.inherit THEN 'INHERIT' ELSE 'NOINHERIT' END, pol.connection_limit,
                CASE WHEN pg_catalog.cardinality(pol.member_of) OPERATOR(pg_catalog.>) 0
                     THEN ', member of ' OPERATOR(pg_catalog.||) pg_catalog.array_to_string(pol.member_of, ', ')
                     ELSE '' END);
        IF apply THEN
            EXECUTE pg_catalog.format(
                'CREATE ROLE %I LOGIN %s NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT %s',
                role, CASE WHEN pol.inherit THEN 'INHERIT' ELSE 'NOINHERIT' END, pol.connection_limit);
            SELECT a.oid INTO rid FROM pg_catalog.pg_authid AS a
             WHERE a.rolname OPERATOR(pg_catalog.=) role;
            INSERT INTO oauth.provisioned_roles (role, rolname, issuer, subject)
            VALUES (rid, role, issuer, subject);
            EXECUTE pg_catalog.format('COMMENT ON ROLE %I IS %L', role,
                pg_catalog.format('provisioned by pg_oauth for subject %s of issuer %s', subject, issuer));
            PERFORM oauth._provision_audit('provisioned', issuer, subject, role,
                pg_catalog.format('created role %s', pg_catalog.quote_ident(role)));
        END IF;
        FOREACH g IN ARRAY pol.member_of LOOP
            problem := oauth._provision_target_problem(g);
            IF problem IS NOT NULL THEN
                RETURN QUERY SELECT 'skip', g, pg_catalog.format('member_of role %s is not joined: %s',
                                                                 pg_catalog.quote_ident(g), problem);
                CONTINUE;
            END IF;
            RETURN QUERY SELECT 'join', g, 'member_of of the policy';
            IF apply THEN
                EXECUTE pg_catalog.format('GRANT %I TO %I', g, role);
                INSERT INTO oauth.provisioned_memberships (member, group_role, source)
                SELECT rid, a.oid, 'template' FROM pg_catalog.pg_authid AS a
                 WHERE a.rolname OPERATOR(pg_catalog.=) g
                ON CONFLICT DO NOTHING;
                PERFORM oauth._provision_audit('granted', issuer, subject, role,
                    pg_catalog.format('granted %s to %s (member_of)', pg_catalog.quote_ident(g),
                                      pg_catalog.quote_ident(role)));
            END IF;
        END LOOP;
    END IF;

    -- the token's groups: grant what is missing, revoke what pg_oauth granted
    -- and the token no longer carries
    IF pol.groups_claim IS NOT NULL AND groups IS NOT NULL THEN
        FOR g IN SELECT DISTINCT x FROM pg_catalog.unnest(groups) AS x ORDER BY x LOOP
            problem := oauth._provision_target_problem(g);
            IF problem IS NOT NULL THEN
                RETURN QUERY SELECT 'skip', g, pg_catalog.format('group role %s is not granted: %s',
                                                                 pg_catalog.quote_ident(g), problem);
                CONTINUE;
            END IF;
            SELECT a.oid INTO goid FROM pg_catalog.pg_authid AS a
             WHERE a.rolname OPERATOR(pg_catalog.=) g;
            wanted := wanted OPERATOR(pg_catalog.||) goid;
            IF EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members AS am
                          WHERE am.roleid OPERATOR(pg_catalog.=) goid
                            AND am.member OPERATOR(pg_catalog.=) rid) THEN
                CONTINUE;
            END IF;
            RETURN QUERY SELECT 'grant', g, 'the token''s groups give it';
            IF apply THEN
                EXECUTE pg_catalog.format('GRANT %I TO %I', g, role);
                INSERT INTO oauth.provisioned_memberships (member, group_role, source)
                VALUES (rid, goid, 'group')
                ON CONFLICT DO NOTHING;
                PERFORM oauth._provision_audit('granted', issuer, subject, role,
                    pg_catalog.format('granted %s to %s', pg_catalog.quote_ident(g), pg_catalog.quote_ident(role)));
            END IF;
        END LOOP;
        IF NOT created THEN
            FOR m IN SELECT pm.group_role, a.rolname::text AS name,
                            EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members AS am
                                     WHERE am.roleid OPERATOR(pg_catalog.=) pm.group_role
                                       AND am.member OPERATOR(pg_catalog.=) rid) AS member
                       FROM oauth.provisioned_memberships AS pm
                       LEFT JOIN pg_catalog.pg_authid AS a ON a.oid OPERATOR(pg_catalog.=) pm.group_role
                      WHERE pm.member OPERATOR(pg_catalog.=) rid AND pm.source OPERATOR(pg_catalog.=) 'group'
                        AND pm.group_role OPERATOR(pg_catalog.<>) ALL (wanted)
                      ORDER BY 2 LOOP
                IF m.name IS NOT NULL AND m.member THEN
                    RETURN QUERY SELECT 'revoke', m.name, 'the token''s groups no longer give it';
                END IF;
                IF apply THEN
                    IF m.name IS NOT NULL AND m.member THEN
                        EXECUTE pg_catalog.format('REVOKE %I FROM %I', m.name, role);
                        PERFORM oauth._provision_audit('revoked', issuer, subject, role,
                            pg_catalog.format('revoked %s from %s', pg_catalog.quote_ident(m.name),
                                              pg_catalog.quote_ident(role)));
                    END IF;
                    DELETE FROM oauth.provisioned_memberships AS pm
                     WHERE pm.member OPERATOR(pg_catalog.=) rid
                       AND pm.group_role OPERATOR(pg_catalog.=) m.group_role;
                END IF;
            END LOOP;
        END IF;
    END IF;
    RETURN QUERY SELECT 'keep', role, 'up to date';
END
$$;
REVOKE ALL ON FUNCTION oauth._provision(text, text, text, text[], boolean, boolean) FROM PUBLIC;
COMMENT ON FUNCTION oauth._provision(text, text, text, text[], boolean, boolean) IS
    'Called by the validator workers: create a token''s role and sync its group memberships (apply), or say what that would do';

-- Disable (or drop) the roles pg_oauth created that were not seen for the
-- policy's offboard_after; forget records of roles a DBA dropped.  Run by the
-- housekeeper every minute and after every configuration change; a DBA may
-- run it at any time.  lock_timeout: a lock it cannot have fails this run (the
-- next one tries again), never stalls the housekeeper, which also ends expired
-- sessions.
CREATE FUNCTION oauth.offboard()
    RETURNS TABLE(role name, action text, detail text)
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    SET lock_timeout = '2s'
    AS $$
DECLARE
    r record;
    why text;
    changed boolean := false;
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RETURN;
    END IF;
    DELETE FROM oauth.provisioned_memberships AS pm
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_authid AS a WHERE a.oid OPERATOR(pg_catalog.=) pm.member)
        OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_authid AS a WHERE a.oid OPERATOR(pg_catalog.=) pm.group_role);
    FOR r IN DELETE FROM oauth.provisioned_roles AS m
              WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_authid AS a
                                 WHERE a.oid OPERATOR(pg_catalog.=) m.role
                                   AND a.rolname OPERATOR(pg_catalog.=) m.rolname)
              RETURNING m.role, m.rolname LOOP
        DELETE FROM oauth.provisioned_memberships AS pm WHERE pm.member OPERATOR(pg_catalog.=) r.role;
        changed := true;
        RETURN QUERY SELECT r.rolname, 'forgotten',
            'no role of this oid and name: dropped or renamed outside pg_oauth, or a record restored into another cluster';
    END LOOP;

    -- due: not seen for offboard_after and still enabled; with drop, also the
    -- roles an earlier pass could only disable (they owned objects then)
    FOR r IN SELECT m.role AS oid, a.rolname, m.issuer, m.subject, m.last_seen, p.offboard_action,
                    a.rolcanlogin AS enabled
               FROM oauth.provisioned_roles AS m
               JOIN oauth.provisioning AS p ON p.issuer OPERATOR(pg_catalog.=) m.issuer
               JOIN pg_catalog.pg_authid AS a ON a.oid OPERATOR(pg_catalog.=) m.role
                                            AND a.rolname OPERATOR(pg_catalog.=) m.rolname
              WHERE p.enabled AND p.offboard_after IS NOT NULL
                AND m.last_seen OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) p.offboard_after
                        OPERATOR(pg_catalog.-) oauth._provision_seen_every(p.offboard_after))
                AND ((m.disabled_at IS NULL AND a.rolcanlogin)
                     OR (p.offboard_action OPERATOR(pg_catalog.=) 'drop'
                         AND m.disabled_reason OPERATOR(pg_catalog.=) 'inactive'))
                -- a session still open is a user still there
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity AS s
                                 WHERE s.usesysid OPERATOR(pg_catalog.=) m.role)
              ORDER BY a.rolname LOOP
        -- a login of this role decides under the same lock (one under way: the
        -- role is not unseen; the key is one anyone may hold: never wait for it);
        -- one that committed since the loop's snapshot leaves the role alone
        IF NOT pg_catalog.pg_try_advisory_xact_lock(1868658037, pg_catalog.hashtext(r.rolname::text)) THEN
            CONTINUE;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM oauth.provisioned_roles AS m
                         JOIN pg_catalog.pg_authid AS a ON a.oid OPERATOR(pg_catalog.=) m.role
                        WHERE m.role OPERATOR(pg_catalog.=) r.oid
                          AND a.rolcanlogin OPERATOR(pg_catalog.=) r.enabled
                          AND m.last_seen OPERATOR(pg_catalog.=) r.last_seen) THEN
            CONTINUE;
        END IF;
        why := pg_catalog.format('not seen since %s', r.last_seen);
        IF r.offboard_action OPERATOR(pg_catalog.=) 'drop' THEN
            BEGIN
                EXECUTE pg_catalog.format('DROP ROLE %I', r.rolname);
                DELETE FROM oauth.provisioned_memberships AS pm WHERE pm.member OPERATOR(pg_catalog.=) r.oid;
                DELETE FROM oauth.provisioned_roles AS m WHERE m.role OPERATOR(pg_catalog.=) r.oid;
                PERFORM oauth._provision_audit('dropped', r.issuer, r.subject, r.rolname::text,
                    pg_catalog.format('dropped role %s: %s', pg_catalog.quote_ident(r.rolname), why));
                changed := true;
                RETURN QUERY SELECT r.rolname, 'dropped', why;
                CONTINUE;
            EXCEPTION WHEN OTHERS THEN
                -- it owns objects or holds privileges somewhere: disable it instead
                -- (and try the drop again at every pass)
                why := why OPERATOR(pg_catalog.||) '; not dropped: ' OPERATOR(pg_catalog.||) SQLERRM;
            END;
            IF NOT r.enabled THEN
                CONTINUE;
            END IF;
        END IF;
        EXECUTE pg_catalog.format('ALTER ROLE %I NOLOGIN', r.rolname);
        UPDATE oauth.provisioned_roles AS m SET disabled_at = pg_catalog.now(), disabled_reason = 'inactive'
         WHERE m.role OPERATOR(pg_catalog.=) r.oid;
        PERFORM oauth._provision_audit('disabled', r.issuer, r.subject, r.rolname::text,
            pg_catalog.format('disabled role %s (NOLOGIN): %s', pg_catalog.quote_ident(r.rolname), why));
        changed := true;
        RETURN QUERY SELECT r.rolname, 'disabled', why;
    END LOOP;
    -- the decision cache keeps role names: a dropped role's name may be given
    -- to another subject's role, and a disabled role is enabled again only by
    -- a worker, never by a cached decision
    IF changed THEN
        PERFORM oauth._config_changed();
    END IF;
END
$$;
REVOKE ALL ON FUNCTION oauth.offboard() FROM PUBLIC;
COMMENT ON FUNCTION oauth.offboard() IS
    'Disable (NOLOGIN) or drop, per oauth.provisioning, the roles pg_oauth created that were not seen for offboard_after; the housekeeper runs it every minute';

-- A revocation of a whole subject disables the roles pg_oauth made for it
-- (disable_on_revoke); its next valid token, once the revocation is gone,
-- enables them again.  SECURITY DEFINER: whoever may revoke may not ALTER ROLE.
-- The revocation itself must never wait for or fail with the disabling: a role
-- may ALTER its own password and hold its pg_authid row in an open transaction.
CREATE FUNCTION oauth._revocation_disables_roles() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET lock_timeout = '2s'
    AS $$
DECLARE
    r record;
BEGIN
    IF NEW.subject IS NULL OR NEW.token_id IS NOT NULL OR NEW.issued_before IS NOT NULL THEN
        RETURN NULL;
    END IF;
    FOR r IN SELECT m.role AS oid, a.rolname, m.issuer
               FROM oauth.provisioned_roles AS m
               JOIN oauth.provisioning AS p ON p.issuer OPERATOR(pg_catalog.=) m.issuer
               JOIN pg_catalog.pg_authid AS a ON a.oid OPERATOR(pg_catalog.=) m.role
                                            AND a.rolname OPERATOR(pg_catalog.=) m.rolname
              WHERE m.subject OPERATOR(pg_catalog.=) NEW.subject
                AND (NEW.issuer IS NULL OR m.issuer OPERATOR(pg_catalog.=) NEW.issuer)
                AND p.enabled AND p.disable_on_revoke AND a.rolcanlogin LOOP
        BEGIN
            EXECUTE pg_catalog.format('ALTER ROLE %I NOLOGIN', r.rolname);
            UPDATE oauth.provisioned_roles AS m SET disabled_at = pg_catalog.now(), disabled_reason = 'revoked'
             WHERE m.role OPERATOR(pg_catalog.=) r.oid;
            PERFORM oauth._provision_audit('disabled', r.issuer, NEW.subject, r.rolname::text,
                pg_catalog.format('disabled role %s (NOLOGIN): its subject was revoked', pg_catalog.quote_ident(r.rolname)));
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pg_oauth: role % of the revoked subject was not disabled: %',
                pg_catalog.quote_ident(r.rolname), SQLERRM
                USING HINT = 'The revocation holds: its tokens are refused and its sessions end. Run ALTER ROLE ... NOLOGIN once its sessions are gone.';
        END;
    END LOOP;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION oauth._revocation_disables_roles() FROM PUBLIC;
CREATE TRIGGER revocations_disable_roles
    AFTER INSERT ON oauth.revocations
    FOR EACH ROW EXECUTE FUNCTION oauth._revocation_disables_roles();
ALTER TABLE oauth.revocations ENABLE ALWAYS TRIGGER revocations_disable_roles;

-- check_setup's rows on provisioning policies (60-setup-check.sql): what a
-- policy would grant that it never will, names a user can pick, and first
-- logins pg_hba.conf cannot admit
CREATE FUNCTION oauth._check_provisioning()
    RETURNS TABLE(severity text, check_name text, finding text, fix text)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    r record;
    problem text;
BEGIN
    FOR r IN SELECT g.id, g.issuer, g.group_pattern, g.role
               FROM oauth.group_roles AS g
               JOIN oauth.provisioning AS p ON p.issuer OPERATOR(pg_catalog.=) g.issuer
              WHERE p.enabled AND pg_catalog.strpos(g.role, E'\\') OPERATOR(pg_catalog.=) 0
              ORDER BY g.id LOOP
        problem := oauth._provision_target_problem(r.role);
        IF problem IS NOT NULL THEN
            RETURN QUERY SELECT
                CASE WHEN problem OPERATOR(pg_catalog.=) 'the role does not exist' THEN 'warning' ELSE 'risk' END,
                'provisioning_group_role_unusable',
                pg_catalog.format('oauth.group_roles rule %s (issuer %s) maps group pattern %s to role %s, which is never granted: %s',
                                  r.id, r.issuer, r.group_pattern, r.role, problem),
                'Map groups only to existing NOLOGIN roles without privileges (CREATE ROLE ... NOLOGIN), or delete the rule';
        END IF;
    END LOOP;
    FOR r IN SELECT p.issuer, m AS role
               FROM oauth.provisioning AS p, pg_catalog.unnest(p.member_of) AS m
              WHERE p.enabled LOOP
        problem := oauth._provision_target_problem(r.role);
        IF problem IS NOT NULL THEN
            RETURN QUERY SELECT 'risk', 'provisioning_member_of_unusable',
                pg_catalog.format('the provisioning policy of issuer %s makes new roles members of %s, which is never granted: %s',
                                  r.issuer, r.role, problem),
                'Name in member_of only existing NOLOGIN roles without privileges (the group role the token lines of pg_hba.conf name)';
        END IF;
    END LOOP;
    RETURN QUERY SELECT 'warning', 'provisioning_any_group',
        pg_catalog.format('oauth.group_roles rule %s (issuer %s) turns any group name into a role name (%s -> %s): whoever can name a group at the identity provider picks the role',
                          g.id, g.issuer, g.group_pattern, g.role),
        'Match the group names you mean (a literal, or a prefix such as db-([a-z_]+)) and map them to roles made for it'
      FROM oauth.group_roles AS g
      JOIN oauth.provisioning AS p ON p.issuer OPERATOR(pg_catalog.=) g.issuer
     WHERE p.enabled AND pg_catalog.strpos(g.role, E'\\') OPERATOR(pg_catalog.>) 0
       AND pg_catalog.regexp_replace(g.group_pattern, '^\^?(.*?)\$?$', '\1')
           OPERATOR(pg_catalog.=) ANY ('{(.*),(.+),.*,.+,(.*?),(.+?)}'::text[]);
    RETURN QUERY SELECT 'warning', 'provisioning_user_chosen_name',
        pg_catalog.format('the provisioning policy of issuer %s names roles after claim %s, which users can change at many identity providers',
                          p.issuer, p.role_claim),
        'Name roles after sub, oid, or an address the identity provider verifies (email with email_verified), and limit role_pattern to your domain'
      FROM oauth.provisioning AS p
     WHERE p.enabled AND pg_catalog.lower(p.role_claim) OPERATOR(pg_catalog.=)
           ANY ('{name,preferred_username,nickname,given_name,family_name,unique_name}'::text[]);
    -- an address nobody verified is one anybody may register first (Entra ID's
    -- email is editable and comes without email_verified: the nOAuth attack)
    RETURN QUERY SELECT 'warning', 'provisioning_unverified_email',
        pg_catalog.format('the provisioning policy of issuer %s names roles after claim email, and the issuer does not require email_verified=true (oauth.issuers.required_claims): whoever gets a token with an address first gets its role',
                          p.issuer),
        'Add email_verified=true to the issuer''s required_claims, or name roles after sub or oid (Entra ID sends no email_verified)'
      FROM oauth.provisioning AS p
      JOIN oauth.issuers AS i ON i.issuer OPERATOR(pg_catalog.=) p.issuer
     WHERE p.enabled AND pg_catalog.lower(p.role_claim) OPERATOR(pg_catalog.=) 'email'
       AND NOT ('email_verified=true' OPERATOR(pg_catalog.=) ANY (COALESCE(i.required_claims, '{}'::text[])));
    -- a +group column never matches a role that does not exist yet
    IF EXISTS (SELECT 1 FROM oauth.provisioning AS p WHERE p.enabled)
       AND NOT EXISTS (SELECT 1 FROM oauth._hba_lines('trust') AS h
                        WHERE h.type OPERATOR(pg_catalog.<>) 'local'
                          AND EXISTS (SELECT 1 FROM pg_catalog.unnest(h.user_name) AS u
                                       WHERE u OPERATOR(pg_catalog.=) 'all'
                                          OR u OPERATOR(pg_catalog.~~) '/%')) THEN
        RETURN QUERY SELECT 'warning', 'provisioning_no_first_login_line',
            'a provisioning policy is enabled, but no trust line of pg_hba.conf can match a role that does not exist yet (a +group or a name never does): first logins get "no pg_hba.conf entry"',
            'Add a hostssl trust line for user all (PostgreSQL 15) or a regular expression matching the names the policy gives (16 and later), after lines that reject privileged roles (docs/provisioning.md)';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION oauth._check_provisioning() FROM PUBLIC;

-- issue 24: latency histograms for Prometheus (40-observability.sql)
-- The latency histograms behind oauth.stats' p50/p99, for Prometheus: per
-- issuer and phase (validation: a worker's decision; queue_wait: a login
-- waiting for a worker; login: the whole attempt, as the audit's elapsed_ms),
-- count is how many took less than le_seconds, cumulative up to le_seconds
-- 'Infinity' (= total); sum_seconds is their exact sum.  The bounds are
-- powers of two of microseconds (64 us to about 8.4 s), boundaries of the
-- histograms themselves: counts, not estimates (docs/monitoring.md).
CREATE FUNCTION oauth._stats_histogram(
        OUT issuer text, OUT phase text, OUT le_seconds float8, OUT count bigint,
        OUT sum_seconds float8, OUT total bigint)
    RETURNS SETOF record
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'pg_oauth_fn_stats_histogram';
REVOKE ALL ON FUNCTION oauth._stats_histogram() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION oauth._stats_histogram() TO pg_read_all_stats;

CREATE VIEW oauth.stats_histogram AS SELECT * FROM oauth._stats_histogram();
REVOKE ALL ON oauth.stats_histogram FROM PUBLIC;
GRANT SELECT ON oauth.stats_histogram TO pg_read_all_stats;
COMMENT ON VIEW oauth.stats_histogram IS
    'Latency histograms of oauth.stats per issuer and phase (validation, queue_wait, login): cumulative counts below powers of two of microseconds, +Inf (Infinity) last, and the exact sum; reset with oauth.stats_reset()';
