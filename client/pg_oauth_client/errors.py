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


class RefreshRefused(IdPError):
    """The refresh token was refused (expired, revoked, rotated away): sign in again."""


class SignInNeeded(ClientError):
    """An interactive sign-in is needed but was not allowed (``--no-interactive``)."""


class SourceError(ClientError):
    """A token file, command or CI environment did not give a usable token."""


class NoTokenError(ClientError):
    """A transaction behind a pooler was begun with no end-user token to authenticate it
    (pg_oauth_client.pooled): pass one, or set it with using_token()."""
