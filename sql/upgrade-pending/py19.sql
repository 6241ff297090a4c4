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
