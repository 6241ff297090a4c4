"""HTTP to the identity provider under the profile's trust: ``ca_file``, when set, is the
one CA bundle every request to the IdP verifies against (discovery, token, device
authorization, revocation), and a certificate that does not verify is reported as that,
not as a host that cannot be reached."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from authlib.integrations.requests_client import OAuth2Session

from pg_oauth_client import __version__
from pg_oauth_client.errors import ConfigError
from pg_oauth_client.profile import Profile

# the profile source of a profile made of command-line options (pg-oauth token --issuer)
COMMAND_LINE_SOURCE = "command line"
_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH


class _ProfileTrust:
    """requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override ``Session.verify``
    (Session.merge_environment_settings); the profile's ca_file must win over them."""

    ca_file: str | None = None

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> dict[str, Any]:
        settings = super().merge_environment_settings(  # type: ignore[misc]
            url, proxies, stream, verify, cert)
        if self.ca_file:
            settings["verify"] = self.ca_file
        return settings


class IdPSession(_ProfileTrust, requests.Session):
    """A plain session to the IdP (discovery)."""


class IdPOAuth2Session(_ProfileTrust, OAuth2Session):
    """Authlib's OAuth 2.0 client session to the IdP (token, device, revocation)."""


def ca_file_of(profile: Profile) -> str | None:
    """The profile's ca_file, expanded, once known to be readable: requests would raise
    OSError (not one of its own errors) for a missing bundle."""
    if not profile.ca_file:
        return None
    path = Path(profile.ca_file).expanduser()
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{_setting(profile)}: cannot read ca_file {path}: "
                          f"{exc.strerror}") from None
    return str(path)


def trust(session: _ProfileTrust, profile: Profile) -> None:
    """Make ``session`` verify the IdP with the profile's ca_file (if any)."""
    session.ca_file = ca_file_of(profile)
    if isinstance(session, requests.Session):
        session.headers["User-Agent"] = f"pg-oauth/{__version__}"


def idp_session(profile: Profile) -> IdPSession:
    session = IdPSession()
    trust(session, profile)
    return session


def tls_failure(exc: requests.RequestException, url: str, profile: Profile,
                env: Mapping[str, str] | None = None) -> str | None:
    """The sentence for a TLS failure with the IdP, None when ``exc`` is not one."""
    if not isinstance(exc, requests.exceptions.SSLError):
        return None
    host = urlsplit(url).netloc
    verify = _find_cert_error(exc)
    if verify is None:
        return f"TLS with {host} failed ({_first_line(exc)})"
    reason = verify.verify_message or "certificate verify failed"
    if verify.verify_code == _HOSTNAME_MISMATCH:
        return (f"the IdP's certificate at {host} is not valid for that name ({reason}): "
                "use the host name the certificate names in issuer")
    env = os.environ if env is None else env
    if profile.ca_file:
        return (f"the IdP's certificate at {host} is not trusted ({reason}; checked against "
                f"ca_file {profile.ca_file} of {_setting(profile)}): ca_file must hold the "
                "certificate of the CA that issued it")
    store = next((f"{var}={env[var]}" for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
                  if env.get(var)), "the CA bundle of Python's requests (certifi)")
    if profile.source == COMMAND_LINE_SOURCE:
        fix = "pass --ca-file FILE, the PEM certificate of the CA that issued it"
    else:
        fix = (f'set ca_file = "/path/to/idp-ca.pem" (the CA that issued it) in '
               f"profile {profile.name!r}, or PG_OAUTH_CA_FILE")
    return (f"the IdP's certificate at {host} is not trusted ({reason}; checked against "
            f"{store}): {fix}")


def certificate_failure(exc: BaseException) -> bool:
    """The IdP's certificate did not verify (untrusted, or for another host name)."""
    return _find_cert_error(exc) is not None


def _setting(profile: Profile) -> str:
    return ("--ca-file" if profile.source == COMMAND_LINE_SOURCE
            else f"profile {profile.name!r}")


def _find_cert_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification error under requests' and urllib3's wrappers."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLCertVerificationError):
            return item
        todo.extend(item.args)
        todo.extend((getattr(item, "reason", None), item.__cause__, item.__context__))
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
