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
