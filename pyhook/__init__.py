"""pyhook: validation of OAuth/OIDC JWT logins for the pg_oauth PostgreSQL extension.

The modules have one job each: ``validator`` decides, ``jwks_cache`` holds keys,
``config`` reads the oauth.* tables' rows, ``claim_path`` resolves claim paths,
``plpython_adapter`` is the PL/Python entry point, ``offline_config`` feeds
``pg-oauth explain``/``check`` from a JSON file or a database, ``cli`` holds the
subcommands of ``pg-oauth`` for the server's administrators.
Importing the package itself loads nothing heavy.
"""

__version__ = "1.0.0"
