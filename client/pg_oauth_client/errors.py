"""One exception hierarchy: every failure the user can cause or meet is one line of text
and an exit status. Messages never contain a token, a secret or a key."""

from __future__ import annotations


class ClientError(Exception):
    """A failure reported as one line (``pg-oauth: <message>``) and a non-zero exit."""

    exit_status = 1


class ConfigError(ClientError):
    """The profile or the config file is wrong: fix the configuration."""

    exit_status = 2


class IdPError(ClientError):
    """The identity provider refused a request or could not be reached."""

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error


class IdPUnavailable(IdPError):
    """The identity provider could not be reached or failed (timeout, HTTP 5xx): it may
    be back in a minute, so a cached token that is still valid long enough is used."""


class IdPCertificateError(IdPError):
    """The IdP's certificate did not verify (a CA not trusted, another host name): a
    configuration problem, or someone in the middle. Not an IdP that is down: no cached
    token is handed out in its place; it is said until the trust is fixed."""


class RefreshRefused(IdPError):
    """The refresh token was refused (expired, revoked, rotated away): sign in again."""


class SignInNeeded(ClientError):
    """An interactive sign-in is needed but was not allowed (``--no-interactive``, no
    terminal, ``get_token()`` without ``interactive=True``). ``why``: what the sign-in
    is for, when it is not the first one (" of its own (...)")."""

    def __init__(self, profile: str, why: str = "", context: str = "",
                 where: str = "") -> None:
        self.profile, self.why = profile, why
        super().__init__(f"profile {profile!r} needs a sign-in{why}{context}: "
                         f"run pg-oauth login --profile {profile}{where}")

    def because(self, context: str) -> SignInNeeded:
        """The same, saying why none was started, and that a terminal is where to do it."""
        return SignInNeeded(self.profile, self.why, context, " in a terminal first")


class SourceError(ClientError):
    """A token file, command or CI environment did not give a usable token."""


class NoTokenError(ClientError):
    """A transaction behind a pooler was begun with no end-user token to authenticate it
    (pg_oauth_client.pooled): pass one, or set it with using_token()."""
