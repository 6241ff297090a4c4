"""pyhook: validation of OAuth/OIDC JWT logins for the pg_oauth PostgreSQL extension.

The modules have one job each: ``validator`` decides, ``jwks_cache`` holds keys,
``config`` reads the oauth.* tables' rows, ``plpython_adapter`` is the PL/Python
entry point, ``dev_issuer`` and ``cli`` serve development and tests.
Importing the package itself loads nothing heavy.
"""

__version__ = "1.0.0"
