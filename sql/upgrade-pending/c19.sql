-- Pending changes of branch c19 (issue 19, findings 4 and 5), written to apply to
-- an installed 1.0.

-- oauth.revoke ends the sessions it covers only when the (sub)transaction commits
COMMENT ON FUNCTION oauth.revoke(text, text, text, timestamptz, text) IS
    'Revoke by token id, subject and/or issuer (until expires_at, NULL: forever) and end the live sessions it covers when the transaction commits; returns how many it covers now';
