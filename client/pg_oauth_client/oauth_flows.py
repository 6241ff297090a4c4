"""The OAuth 2.0 grants, on Authlib's client (RFC 6749 client authentication, RFC 7523
private_key_jwt): client credentials, the device authorization grant (RFC 8628), refresh
tokens and token exchange (RFC 8693). Each returns the token endpoint's response."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.oauth2.rfc7523 import PrivateKeyJWT

from pg_oauth_client.discovery import fetch_metadata, request_failed
from pg_oauth_client.errors import ConfigError, IdPError, IdPUnavailable, RefreshRefused
from pg_oauth_client.idp_http import IdPOAuth2Session, trust
from pg_oauth_client.profile import Profile

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"

Notify = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class OAuthClient:
    """One profile's client: its session, client authentication and endpoints."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        secret: Any = profile.client_secret
        if profile.auth_method == "private_key_jwt":
            secret, alg = _load_private_key(profile)
        self.session = IdPOAuth2Session(
            profile.client_id,
            secret,
            token_endpoint_auth_method=profile.auth_method,
            default_timeout=profile.http_timeout,
        )
        trust(self.session, profile)
        self.metadata = fetch_metadata(profile)
        self.token_endpoint = str(self.metadata.get("token_endpoint") or "")
        if not self.token_endpoint:
            raise IdPError(f"profile {profile.name!r}: the issuer publishes no token_endpoint")
        if profile.auth_method == "private_key_jwt":
            headers = {"kid": profile.private_key_kid} if profile.private_key_kid else None
            self.session.register_client_auth_method(
                PrivateKeyJWT(self.token_endpoint, headers=headers, alg=alg))

    def close(self) -> None:
        self.session.close()

    # -- grants ------------------------------------------------------------
    def client_credentials(self) -> dict[str, Any]:
        return self._token_request("client_credentials", scope=self.profile.scope,
                                   **self.profile.token_target)

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        try:
            return self._token_request("refresh_token", refresh_token=refresh_token,
                                       **self.profile.token_target)
        except IdPError as exc:
            if exc.error == "invalid_grant":
                raise RefreshRefused(str(exc), exc.error) from None
            raise

    def token_exchange(self, subject_token: str) -> dict[str, Any]:
        return self._token_request(
            TOKEN_EXCHANGE_GRANT,
            subject_token=subject_token,
            subject_token_type=self.profile.subject_token_type,
            requested_token_type=ACCESS_TOKEN_TYPE,
            scope=self.profile.scope,
            **self.profile.token_target,
        )

    def device_code(self, notify: Notify = _stderr,
                    sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic,
                    also_resources: Sequence[str] = ()) -> dict[str, Any]:
        """RFC 8628: ask for a code, tell the user where to enter it, poll until done.
        ``also_resources``: more RFC 8707 resources for the sign-in to cover (other
        databases at this IdP), so that its refresh token can get their tokens later; an
        IdP that refuses them (invalid_target) is asked again for this profile's alone."""
        endpoint = self.metadata.get("device_authorization_endpoint")
        if not endpoint:
            raise IdPError(f"profile {self.profile.name!r}: the issuer has no "
                           "device_authorization_endpoint (no device flow)")
        body = [(k, v) for k, v in (("scope", self.profile.scope),
                                    *self.profile.token_target.items(),
                                    *self.profile.extra_params) if v]
        more = [r for r in dict.fromkeys(also_resources) if r != self.profile.resource]
        started = clock()
        try:
            grant = self._post_json(str(endpoint), [*body, *(("resource", r) for r in more)],
                                    "device authorization")
        except IdPError as exc:
            if not more or exc.error != "invalid_target":
                raise
            notify(f"pg-oauth: the issuer would not cover {', '.join(more)} in the same "
                   "sign-in (invalid_target): those profiles will need a sign-in of their own")
            grant = self._post_json(str(endpoint), body, "device authorization")
        device_code = grant.get("device_code")
        user_code = grant.get("user_code")
        uri = grant.get("verification_uri") or grant.get("verification_url")
        if not (isinstance(device_code, str) and isinstance(user_code, str) and uri):
            raise IdPError(f"profile {self.profile.name!r}: the device authorization "
                           "response lacks device_code, user_code or verification_uri")
        expires_in = _seconds(grant.get("expires_in"), 600)
        interval = _seconds(grant.get("interval"), 5)
        notify(f"pg-oauth: to sign in for profile {self.profile.name!r}, open {uri} "
               f"and enter the code {user_code}")
        if grant.get("verification_uri_complete"):
            notify(f"pg-oauth: or open {grant['verification_uri_complete']}")
        notify(f"pg-oauth: waiting for the sign-in (the code expires in "
               f"{int(expires_in // 60)} min {int(expires_in % 60)} s)")
        while True:
            if clock() - started + interval > expires_in:
                raise IdPError(f"profile {self.profile.name!r}: the sign-in was not "
                               "completed before the code expired; run the command again",
                               "expired_token")
            sleep(interval)
            try:
                # RFC 8707: of the resources signed in for, this profile's
                return self._token_request(DEVICE_CODE_GRANT, device_code=device_code,
                                           resource=self.profile.resource)
            except IdPError as exc:
                if exc.error == "authorization_pending":
                    continue
                if exc.error == "slow_down":  # RFC 8628 3.5: +5 s, for all later polls
                    interval += 5
                    continue
                raise

    # -- HTTP --------------------------------------------------------------
    def _token_request(self, grant_type: str, **params: Any) -> dict[str, Any]:
        params = {k: v for k, v in params.items() if v is not None}
        params.update({k: v for k, v in self.profile.extra_params if k not in params})
        what = _grant_label(grant_type)
        try:
            token = self.session.fetch_token(self.token_endpoint, grant_type=grant_type,
                                             **params)
        except AuthlibBaseError as exc:
            raise IdPError(self._refusal_line(what, exc.error, exc.description),
                           exc.error) from None
        except requests.HTTPError as exc:
            status = exc.response.status_code
            error = IdPUnavailable if status >= 500 else IdPError
            raise error(f"{what} for profile {self.profile.name!r}: the token endpoint "
                        f"answered HTTP {status}") from None
        except requests.RequestException as exc:
            raise request_failed(f"{what} for profile {self.profile.name!r}", exc,
                                 self.token_endpoint, self.profile) from None
        except ValueError as exc:
            raise IdPError(f"{what} for profile {self.profile.name!r}: {exc}") from None
        if not isinstance(token.get("access_token"), str) or not token["access_token"]:
            raise IdPError(f"{what} for profile {self.profile.name!r}: the response has "
                           "no access_token")
        return dict(token)

    def _post_json(self, url: str, body: list[tuple[str, str]], what: str) -> dict[str, Any]:
        auth = self.session.client_auth(self.profile.auth_method)
        try:
            resp = self.session.post(url, data=body, auth=auth, withhold_token=True,
                                     headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            raise request_failed(f"{what} for profile {self.profile.name!r}", exc, url,
                                 self.profile) from None
        if resp.status_code >= 500:
            raise IdPUnavailable(f"{what} for profile {self.profile.name!r}: HTTP "
                                 f"{resp.status_code}")
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise IdPError(f"{what} for profile {self.profile.name!r}: HTTP "
                           f"{resp.status_code}, not a JSON object")
        if "error" in data or resp.status_code != 200:
            error = str(data.get("error", f"HTTP {resp.status_code}"))
            raise IdPError(self._refusal_line(what, error, data.get("error_description")),
                           error)
        return data

    def _refusal_line(self, what: str, error: str | None, description: Any) -> str:
        text = f"{what} for profile {self.profile.name!r} refused by the issuer: {error}"
        if description:
            text += f" ({' '.join(str(description).split())[:300]})"
        hint = _HINTS.get(error or "")
        return f"{text}; {hint}" if hint else text


_HINTS = {
    "invalid_client": "check client_id, the client secret or key, and auth_method",
    "unauthorized_client": "the client is not allowed this grant: ask the IdP's admin",
    "invalid_scope": "check scope in the profile",
    "invalid_target": "check resource / audience in the profile",
    "access_denied": "the sign-in was declined",
    "expired_token": "the code expired: run the command again",
}


def _grant_label(grant_type: str) -> str:
    return {
        "client_credentials": "client credentials",
        "refresh_token": "refresh",
        DEVICE_CODE_GRANT: "device sign-in",
        TOKEN_EXCHANGE_GRANT: "token exchange",
    }.get(grant_type, grant_type)


def _seconds(value: Any, default: float) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return default


def _load_private_key(profile: Profile) -> tuple[Any, str]:
    """The PEM key of private_key_jwt as a joserfc key, and its signing algorithm."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from joserfc.jwk import ECKey, OKPKey, RSAKey

    path = Path(profile.private_key_file or "").expanduser()
    try:
        pem = path.read_bytes()
        key = load_pem_private_key(pem, password=None)
    except OSError as exc:
        raise ConfigError(f"profile {profile.name!r}: cannot read private_key_file "
                          f"{path}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise ConfigError(f"profile {profile.name!r}: private_key_file {path} is not an "
                          "unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        return RSAKey.import_key(pem), profile.private_key_alg or "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        default = {256: "ES256", 384: "ES384", 521: "ES512"}.get(key.curve.key_size, "ES256")
        return ECKey.import_key(pem), profile.private_key_alg or default
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return OKPKey.import_key(pem), profile.private_key_alg or "EdDSA"
    raise ConfigError(f"profile {profile.name!r}: private_key_file {path}: RSA, EC or "
                      "Ed25519 keys only")
