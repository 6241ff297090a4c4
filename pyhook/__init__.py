"""pyhook: validation of OAuth/OIDC JWT logins for the pg_oauth PostgreSQL extension.

Importing the package itself loads nothing heavy. One job per module
(tests/unit/test_package_modules.py keeps this list whole):

The decision
- ``validator``: one token in, one Decision out: the validation core.
- ``decision``: the Decision and the trail of checks that led to it.
- ``errors``: one exception per refusal reason, and how a value is shown in a detail.
- ``config``: the issuers, role_map rules and revocations, built from the tables' rows.
- ``claim_path``: claim paths such as ``realm_access.roles``, as oauth.claim() reads them.
- ``provisioning``: roles from the IdP: the policies, and the names a token may give a role.

The keys
- ``jwks_cache``: the key store: keys per issuer, freshness, refresh, persistence.
- ``jwks_fetch``: getting key documents: URL policy, the HTTP GET, OIDC discovery.
- ``jwk_set``: a JWKS document as key objects, and the key that verifies a token.
- ``edwards_points``: the EdDSA public-key checks OpenSSL leaves out.

In the server (PL/Python)
- ``plpython_adapter``: the Adapter that oauth.validate(), oauth.warmup(),
  oauth.explain() and oauth._refresh_keys_now() call.
- ``sql_queries``: every statement pyhook runs in the server.
- ``sql_rows``: rows read from those statements, and the rows pyhook returns.

The ``pg-oauth`` command
- ``cli``: the server administrators' subcommands of ``pg-oauth`` (explain, check,
  doctor, uninstall), registered in the entry-point group ``pg_oauth.commands``.
- ``offline_config``: the configuration for explain/check, from a JSON file or a database.
- ``server_explain``: oauth.explain over a connection, the token kept out of the server log.
- ``setup_doctor``: ``pg-oauth doctor``, oauth.check_setup() from a shell.
- ``uninstall``: ``pg-oauth uninstall``, taking pg_oauth out of a Debian cluster.
- ``local_connection``: how those commands connect with ``--dsn``.
"""

__version__ = "1.0.0"
