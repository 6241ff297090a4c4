-- issue 19, item 8: plain http to a loopback issuer is a per-issuer choice.
-- Issuers that fetched keys over http://127.0.0.1 (or localhost, [::1]) without
-- allow_insecure_http are refused jwks_unavailable after this until a DBA sets it.
ALTER TABLE oauth.issuers
    ADD COLUMN allow_loopback_http boolean NOT NULL DEFAULT false;
