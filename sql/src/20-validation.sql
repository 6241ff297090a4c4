------------------------------------------------------------------------------
-- Validation depth: token policy per issuer, key cache lifecycle, revocations,
-- the persisted JWKS cache and oauth.explain (the logic lives in pyhook).
------------------------------------------------------------------------------

-- Accept required_claims entries the validator can use: a claim path, optionally
-- followed by =value; anything else would refuse every token of the issuer.
CREATE FUNCTION oauth._required_claims_ok(entries text[]) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
SELECT coalesce(pg_catalog.bool_and(e IS NOT NULL AND
                                    e OPERATOR(pg_catalog.~) '^[^=\s]([^=]*[^=\s])?(=.*)?$'),
                true)
  FROM pg_catalog.unnest(entries) AS e
$$;
REVOKE ALL ON FUNCTION oauth._required_claims_ok(text[]) FROM PUBLIC;

ALTER TABLE oauth.issuers
    -- accepted typ header values, compared case-insensitively with an optional
    -- "application/" prefix (RFC 8725 explicit typing); NULL: any typ or none
    ADD COLUMN typ text[]
        CHECK (typ IS NULL OR (cardinality(typ) > 0 AND array_position(typ, NULL) IS NULL)),
    -- claim paths that must be present, or path=value (JSON, else a string);
    -- an array claim satisfies path=value when one element equals value
    ADD COLUMN required_claims text[]
        CHECK (oauth._required_claims_ok(required_claims)),
    -- accepted azp (authorized party) values; NULL: azp not checked
    ADD COLUMN authorized_parties text[]
        CHECK (authorized_parties IS NULL OR cardinality(authorized_parties) > 0),
    -- tokens must carry a non-empty string sub (RFC 9068 2.2); false only for
    -- providers whose tokens have none (missing_claim otherwise)
    ADD COLUMN require_sub boolean NOT NULL DEFAULT true,
    -- stale-if-error: when refreshes fail, the last good keys keep working this
    -- long after they were fetched, then logins are refused (jwks_unavailable)
    ADD COLUMN jwks_max_stale interval NOT NULL DEFAULT '1 day'
        CHECK (jwks_max_stale >= '1 second'::interval),
    -- a JWKS response's Cache-Control max-age is honoured within these bounds
    -- (jwks_refresh applies when the response has none); the ceiling bounds how
    -- long a key the issuer has withdrawn keeps working
    ADD COLUMN jwks_refresh_min interval NOT NULL DEFAULT '1 minute'
        CHECK (jwks_refresh_min >= '1 second'::interval),
    ADD COLUMN jwks_refresh_max interval NOT NULL DEFAULT '1 hour',
    ADD CONSTRAINT issuers_jwks_refresh_bounds CHECK (jwks_refresh_max >= jwks_refresh_min);

-- plain http:// to a loopback address (a development issuer on this machine) is an
-- explicit choice: any local OS user can bind a free loopback port (or [::1] when
-- the IdP listens on IPv4 only) and serve keys
ALTER TABLE oauth.issuers
    ADD COLUMN allow_loopback_http boolean NOT NULL DEFAULT false;

------------------------------------------------------------------------------
-- Revocations: part of the configuration (cached per version, no query per login)
------------------------------------------------------------------------------

-- A row revokes every token whose iss/sub/jti equal all of its non-NULL columns,
-- until expires_at (NULL: forever); with issued_before, only the tokens issued
-- (iat) before that moment, and those without iat (fail closed).
CREATE TABLE oauth.revocations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    issuer      text,
    subject     text,
    token_id    text,
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,    -- NULL: forever
    CHECK (issuer IS NOT NULL OR subject IS NOT NULL OR token_id IS NOT NULL)
);

COMMENT ON TABLE oauth.revocations IS
    'Revoked tokens: by token id (jti), subject, issuer, or a combination; refused with reason revoked until expires_at';

-- 1.1: last, as ALTER TABLE adds it to a 1.0 table
ALTER TABLE oauth.revocations ADD COLUMN issued_before timestamptz;
COMMENT ON COLUMN oauth.revocations.issued_before IS
    'Only tokens issued (iat) before this moment are revoked, and tokens without iat; NULL: every token';

CREATE TRIGGER revocations_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON oauth.revocations
    FOR EACH STATEMENT EXECUTE FUNCTION oauth._config_trigger();

SELECT pg_catalog.pg_extension_config_dump('oauth.revocations', '');
SELECT pg_catalog.pg_extension_config_dump('oauth.revocations_id_seq', '');

------------------------------------------------------------------------------
-- The last good JWKS per fetched issuer, so a restarted worker or server (or
-- a standby, from what replicated) starts with keys and without the network.
-- Written by the validator on a primary after a successful fetch; public key
-- members only. A cache: not dumped, safe to empty.
------------------------------------------------------------------------------

CREATE TABLE oauth.jwks_cache (
    issuer      text PRIMARY KEY REFERENCES oauth.issuers (issuer)
                ON UPDATE CASCADE ON DELETE CASCADE,
    jwks_uri    text NOT NULL,          -- where the document came from
    discovered  boolean NOT NULL,       -- jwks_uri came from OIDC discovery
    jwks        jsonb NOT NULL CHECK (jsonb_typeof(jwks) = 'object'),
    etag        text,                   -- sent back as If-None-Match
    max_age     interval,               -- Cache-Control max-age of the response
    fetched_at  timestamptz NOT NULL
);

COMMENT ON TABLE oauth.jwks_cache IS
    'Last good JWKS (public keys only) fetched for each issuer; loaded by validator workers at start';

------------------------------------------------------------------------------
-- oauth.explain: the whole decision trail, without trying a login
------------------------------------------------------------------------------

CREATE FUNCTION oauth.explain(
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
REVOKE ALL ON FUNCTION oauth.explain(text, text, text, inet) FROM PUBLIC;
COMMENT ON FUNCTION oauth.explain(text, text, text, inet) IS
    'Dry run of a token login: every check with its input and outcome, then the decision; never shows the signature or key material';
