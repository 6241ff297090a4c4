"""pg_oauth_dev: pg_oauth's development tools, never for a server.

``dev_issuer`` is a local OIDC issuer that signs whatever it is asked to (discovery,
JWKS, minted and forged tokens, the device flow); ``cli`` holds ``pg-oauth dev-issuer``,
``mint`` and ``rotate``. The demo, the tests and the benchmarks use them; ``make install``
and the Debian package leave them out.
"""

__version__ = "1.0.0"
