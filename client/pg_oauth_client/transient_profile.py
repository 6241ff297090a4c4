"""One-off use without a profile: ``pg-oauth token --issuer URL --client-id ID --resource
RES ...`` builds a transient profile from options, resolved and checked like a profile of
the config file, never cached (nothing is left behind), and nothing taken from
``PG_OAUTH_*`` variables: what the command line says is all it uses."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from pg_oauth_client.errors import ConfigError
from pg_oauth_client.idp_http import COMMAND_LINE_SOURCE
from pg_oauth_client.profile import AUTH_METHODS, Profile, settings_profile

NAME = "(command line)"
ONE_OFF_FLOWS = ("client_credentials", "device_code")
# option dest -> profile key
_OPTIONS = {
    "issuer": "issuer",
    "token_endpoint": "token_endpoint",
    "client_id": "client_id",
    "client_secret_env": "client_secret_env",
    "client_secret_file": "client_secret_file",
    "private_key_file": "private_key_file",
    "private_key_kid": "private_key_kid",
    "auth_method": "auth_method",
    "resource": "resource",
    "audience": "audience",
    "scope": "scope",
    "ca_file": "ca_file",
    "flow": "flow",
}


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "one-off use without a profile (not with --profile; nothing is cached)")
    group.add_argument("--issuer", metavar="URL", help="the IdP's issuer (discovery)")
    group.add_argument("--token-endpoint", metavar="URL",
                       help="instead of discovery, for an IdP that has none")
    group.add_argument("--client-id", metavar="ID")
    secret = group.add_mutually_exclusive_group()
    secret.add_argument("--client-secret-env", metavar="VAR",
                        help="the environment variable holding the client secret")
    secret.add_argument("--client-secret-file", metavar="FILE",
                        help="the file holding the client secret")
    secret.add_argument("--private-key-file", metavar="PEM",
                        help="private_key_jwt client authentication with this key")
    group.add_argument("--private-key-kid", metavar="KID")
    group.add_argument("--auth-method", choices=AUTH_METHODS)
    group.add_argument("--resource", metavar="RES", help="RFC 8707 resource indicator")
    group.add_argument("--audience", metavar="AUD")
    group.add_argument("--scope")
    group.add_argument("--ca-file", metavar="PEM", help="the CA bundle that verifies the IdP")
    group.add_argument("--flow", choices=ONE_OFF_FLOWS,
                       help="default: client_credentials with a secret or key, else "
                            "device_code")


def from_options(args: argparse.Namespace, env: Mapping[str, str] | None = None
                 ) -> Profile | None:
    """The transient profile the options describe; None when none of them is given."""
    given = {key: getattr(args, dest) for dest, key in _OPTIONS.items()
             if getattr(args, dest, None) is not None}
    if not given:
        return None
    if args.profile is not None:
        raise ConfigError("--profile and one-off options (--issuer, --client-id, ...) do "
                          "not go together: use one or the other")
    if "issuer" not in given and "token_endpoint" not in given:
        raise ConfigError("one-off use needs --issuer (or --token-endpoint)")
    if "client_id" not in given:
        raise ConfigError("one-off use needs --client-id")
    settings: dict[str, Any] = dict(given)
    has_credentials = any(k in given for k in ("client_secret_env", "client_secret_file",
                                               "private_key_file"))
    settings.setdefault("flow", "client_credentials" if has_credentials else "device_code")
    settings["cache"] = False
    return settings_profile(NAME, settings, COMMAND_LINE_SOURCE, env)
