"""Profiles: how to get a token for one database, from a small TOML file under the user's
config directory and from environment variables.

``~/.config/pg-oauth/config.toml`` (``$PG_OAUTH_CONFIG``, ``$XDG_CONFIG_HOME``)::

    [profile.prod]
    flow = "client_credentials"
    issuer = "https://login.example.com"
    client_id = "reporting"
    client_secret_env = "REPORTING_SECRET"
    resource = "https://db.example.com"
    host = "db.example.com"          # connection defaults for pg-oauth psql / exec
    dbname = "app"

The profile is ``--profile``, else ``$PG_OAUTH_PROFILE``, else ``default``. Every key can
be set or overridden by ``PG_OAUTH_<KEY>`` (``PG_OAUTH_CLIENT_SECRET``,
``PG_OAUTH_AUDIENCE``...), so a profile can live in the environment alone (CI).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pg_oauth_client.errors import ConfigError

try:
    import tomllib
except ImportError:  # pragma: no cover - Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

ENV_PREFIX = "PG_OAUTH_"
DEFAULT_PROFILE = "default"

FLOWS = (
    "client_credentials",
    "device_code",
    "refresh_token",
    "token_exchange",
    "token_file",
    "github_actions",
    "command",
)
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"

# profile key -> libpq environment variable, for pg-oauth psql / exec
CONNECTION_KEYS = {
    "host": "PGHOST",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
}
_STRING_KEYS = (
    "flow", "issuer", "token_endpoint", "device_authorization_endpoint",
    "client_id", "client_secret", "client_secret_env", "client_secret_file",
    "auth_method", "private_key_file", "private_key_kid", "private_key_alg",
    "scope", "resource", "audience",
    "refresh_token", "refresh_token_env", "refresh_token_file",
    "subject_token_file", "subject_profile", "subject_token_type",
    "token_file", "command_json_field", "ca_file",
    *CONNECTION_KEYS,
)
_NUMBER_KEYS = ("min_valid", "http_timeout")
_BOOL_KEYS = ("cache",)
_SECRET_KEYS = ("client_secret", "refresh_token")
KNOWN_KEYS = frozenset((*_STRING_KEYS, *_NUMBER_KEYS, *_BOOL_KEYS, "command", "extra_params"))

DEFAULT_MIN_VALID = 300.0
DEFAULT_HTTP_TIMEOUT = 10.0


def config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("PG_OAUTH_CONFIG"):
        return Path(env["PG_OAUTH_CONFIG"]).expanduser()
    if os.name == "nt" and env.get("APPDATA"):  # pragma: no cover
        return Path(env["APPDATA"]) / "pg-oauth" / "config.toml"
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pg-oauth" / "config.toml"


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("PG_OAUTH_CACHE_DIR"):
        return Path(env["PG_OAUTH_CACHE_DIR"]).expanduser()
    if os.name == "nt" and env.get("LOCALAPPDATA"):  # pragma: no cover
        return Path(env["LOCALAPPDATA"]) / "pg-oauth" / "cache"
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pg-oauth"


@dataclass(frozen=True)
class Profile:
    """One profile, resolved: secrets read, defaults applied, checked for its flow."""

    name: str
    flow: str
    issuer: str | None = None
    token_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    auth_method: str | None = None
    private_key_file: str | None = None
    private_key_kid: str | None = None
    private_key_alg: str | None = None
    scope: str | None = None
    resource: str | None = None
    audience: str | None = None
    refresh_token: str | None = field(default=None, repr=False)
    subject_token_file: str | None = None
    subject_profile: str | None = None
    subject_token_type: str = TOKEN_TYPE_JWT
    token_file: str | None = None
    command: tuple[str, ...] = ()
    command_json_field: str | None = None
    min_valid: float = DEFAULT_MIN_VALID
    cache: bool = True
    http_timeout: float = DEFAULT_HTTP_TIMEOUT
    ca_file: str | None = None
    extra_params: tuple[tuple[str, str], ...] = ()
    connection: tuple[tuple[str, str], ...] = ()
    source: str = ""  # where it came from, for messages

    @property
    def token_target(self) -> dict[str, str]:
        """The RFC 8707 ``resource`` and the ``audience`` parameter, when set."""
        target = {}
        if self.resource:
            target["resource"] = self.resource
        if self.audience:
            target["audience"] = self.audience
        return target

    def fingerprint(self) -> str:
        """Identifies what the cached token was obtained for; secrets are left out."""
        fields = {
            name: getattr(self, name)
            for name in ("flow", "issuer", "token_endpoint", "client_id", "scope",
                         "resource", "audience", "subject_profile", "subject_token_file",
                         "command", "command_json_field", "extra_params")
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def libpq_environment(self) -> dict[str, str]:
        return {CONNECTION_KEYS[k]: v for k, v in self.connection}


def read_config(path: Path) -> dict[str, dict[str, Any]]:
    """The ``[profile.NAME]`` tables of the config file ({} when there is no file)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    profiles = data.get("profile", {})
    unknown_top = set(data) - {"profile"}
    if unknown_top or not isinstance(profiles, dict):
        raise ConfigError(f"{path}: only [profile.NAME] tables are allowed "
                          f"(found {', '.join(sorted(unknown_top)) or 'profile = ...'})")
    for name, table in profiles.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: profile.{name} must be a table")
    return profiles


def profile_names(env: Mapping[str, str] | None = None) -> list[str]:
    return sorted(read_config(config_path(env)))


def load_profile(name: str | None = None, env: Mapping[str, str] | None = None,
                 *, apply_env: bool = True) -> Profile:
    """The named profile (else ``$PG_OAUTH_PROFILE``, else ``default``), with
    ``PG_OAUTH_*`` overrides when ``apply_env``."""
    env = os.environ if env is None else env
    path = config_path(env)
    profiles = read_config(path)
    chosen = name or env.get("PG_OAUTH_PROFILE") or DEFAULT_PROFILE
    settings: dict[str, Any] = dict(profiles.get(chosen, {}))
    source = f"{path} [profile.{chosen}]" if chosen in profiles else "environment"
    for key in settings:
        if key not in KNOWN_KEYS:
            raise ConfigError(f"{path} [profile.{chosen}]: unknown key {key!r}")
    if any(k in settings for k in _SECRET_KEYS):
        _check_private(path, chosen)

    overridden = _environment_settings(env) if apply_env else {}
    settings.update(overridden)
    if not settings:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(
            f"no profile {chosen!r} in {path} (profiles: {known}) and no PG_OAUTH_* "
            "variables: see docs/clients.md")
    if overridden and chosen in profiles:
        source += " + PG_OAUTH_* variables"
    return _resolve(chosen, settings, source, env)


def settings_profile(name: str, settings: Mapping[str, Any], source: str,
                     env: Mapping[str, str] | None = None) -> Profile:
    """A profile from settings that are in no file (``pg-oauth token --issuer ...``),
    resolved and checked as a profile of the config file is."""
    unknown = sorted(set(settings) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown setting {unknown[0]!r}")
    return _resolve(name, dict(settings), source, os.environ if env is None else env)


def _environment_settings(env: Mapping[str, str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for key in KNOWN_KEYS - {"extra_params"}:
        value = env.get(ENV_PREFIX + key.upper())
        if value is not None and value != "":
            settings[key] = value
    return settings


def _check_private(path: Path, name: str) -> None:
    """A secret written into the config file: the file must be readable by its owner only."""
    if os.name == "nt":  # pragma: no cover
        return
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} holds a secret for profile {name!r} but other users can read it: "
            f"chmod 600 {path} (or use client_secret_env / client_secret_file)")


def _text(settings: Mapping[str, Any], key: str, where: str) -> str | None:
    value = settings.get(key)
    if value is None:
        return None
    if key == "port" and isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string")
    return value


def _number(settings: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = settings.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be a number of seconds") from None
    if number < 0:
        raise ConfigError(f"{where}: {key} must not be negative")
    return number


def _bool(settings: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = settings.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise ConfigError(f"{where}: {key} must be true or false")


def _read_secret_file(path: str, what: str, where: str) -> str:
    try:
        value = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {what} file {path}: {exc.strerror}") from exc
    if not value:
        raise ConfigError(f"{where}: {what} file {path} is empty")
    return value


def _secret(settings: Mapping[str, Any], key: str, env: Mapping[str, str], where: str) -> str | None:
    """``key`` itself, ``key_env`` (a variable's name) or ``key_file`` (a path)."""
    given = [k for k in (key, f"{key}_env", f"{key}_file") if settings.get(k)]
    if len(given) > 1:
        raise ConfigError(f"{where}: set only one of {', '.join(given)}")
    if settings.get(f"{key}_env"):
        var = _text(settings, f"{key}_env", where) or ""
        value = env.get(var)
        if not value:
            raise ConfigError(f"{where}: {key}_env names {var}, which is not set")
        return value
    if settings.get(f"{key}_file"):
        return _read_secret_file(_text(settings, f"{key}_file", where) or "", key, where)
    return _text(settings, key, where)


def _resolve(name: str, settings: dict[str, Any], source: str,
             env: Mapping[str, str]) -> Profile:
    where = f"profile {name!r} ({source})"
    flow = (_text(settings, "flow", where) or "").replace("-", "_")
    if not flow:
        raise ConfigError(f"{where}: no flow; set flow to one of {', '.join(FLOWS)}")
    if flow not in FLOWS:
        raise ConfigError(f"{where}: unknown flow {flow!r}; one of {', '.join(FLOWS)}")

    command: tuple[str, ...] = ()
    raw_command = settings.get("command")
    if isinstance(raw_command, str):
        command = tuple(shlex.split(raw_command))
    elif isinstance(raw_command, list) and all(isinstance(a, str) for a in raw_command):
        command = tuple(raw_command)
    elif raw_command is not None:
        raise ConfigError(f"{where}: command must be a string or a list of strings")

    extra = settings.get("extra_params", {})
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise ConfigError(f"{where}: extra_params must be a table of strings")

    connection = tuple((k, v) for k in CONNECTION_KEYS
                       if (v := _text(settings, k, where)) is not None)

    client_secret = _secret(settings, "client_secret", env, where)
    private_key_file = _text(settings, "private_key_file", where)
    auth_method = _text(settings, "auth_method", where)
    if auth_method is None:
        auth_method = ("private_key_jwt" if private_key_file
                       else "client_secret_basic" if client_secret else "none")
    if auth_method not in AUTH_METHODS:
        raise ConfigError(f"{where}: unknown auth_method {auth_method!r}; "
                          f"one of {', '.join(AUTH_METHODS)}")

    profile = Profile(
        name=name,
        flow=flow,
        issuer=(_text(settings, "issuer", where) or "").rstrip("/") or None,
        token_endpoint=_text(settings, "token_endpoint", where),
        device_authorization_endpoint=_text(settings, "device_authorization_endpoint", where),
        client_id=_text(settings, "client_id", where),
        client_secret=client_secret,
        auth_method=auth_method,
        private_key_file=private_key_file,
        private_key_kid=_text(settings, "private_key_kid", where),
        private_key_alg=_text(settings, "private_key_alg", where),
        scope=_text(settings, "scope", where),
        resource=_text(settings, "resource", where),
        audience=_text(settings, "audience", where),
        refresh_token=_secret(settings, "refresh_token", env, where),
        subject_token_file=_text(settings, "subject_token_file", where),
        subject_profile=_text(settings, "subject_profile", where),
        subject_token_type=_text(settings, "subject_token_type", where) or TOKEN_TYPE_JWT,
        token_file=_text(settings, "token_file", where),
        command=command,
        command_json_field=_text(settings, "command_json_field", where),
        min_valid=_number(settings, "min_valid", DEFAULT_MIN_VALID, where),
        cache=_bool(settings, "cache", True, where),
        http_timeout=_number(settings, "http_timeout", DEFAULT_HTTP_TIMEOUT, where) or DEFAULT_HTTP_TIMEOUT,
        ca_file=_text(settings, "ca_file", where),
        extra_params=tuple(sorted(extra.items())),
        connection=connection,
        source=source,
    )
    _check_flow(profile, where)
    return profile


def _check_flow(p: Profile, where: str) -> None:
    def need(condition: bool, what: str) -> None:
        if not condition:
            raise ConfigError(f"{where}: flow {p.flow} needs {what}")

    if p.flow in ("client_credentials", "device_code", "refresh_token", "token_exchange"):
        need(bool(p.issuer or p.token_endpoint), "issuer (or token_endpoint)")
    if p.flow in ("client_credentials", "device_code", "refresh_token"):
        need(bool(p.client_id), "client_id")
    if p.flow == "client_credentials":
        need(p.auth_method != "none", "a client secret (client_secret_env, client_secret_file, "
             "PG_OAUTH_CLIENT_SECRET) or private_key_file")
    if p.auth_method in ("client_secret_basic", "client_secret_post"):
        need(bool(p.client_secret), f"a client secret for auth_method {p.auth_method}")
    if p.auth_method == "private_key_jwt":
        need(bool(p.private_key_file), "private_key_file for auth_method private_key_jwt")
    if p.flow == "device_code":
        need(bool(p.issuer or p.device_authorization_endpoint),
             "issuer (or device_authorization_endpoint)")
    if p.flow == "refresh_token":
        need(bool(p.refresh_token), "refresh_token_env, refresh_token_file or refresh_token")
    if p.flow == "token_exchange":
        need(bool(p.subject_token_file) != bool(p.subject_profile),
             "exactly one of subject_token_file and subject_profile")
        if p.subject_profile == p.name:
            raise ConfigError(f"{where}: subject_profile names the profile itself")
    if p.flow == "token_file":
        need(bool(p.token_file), "token_file")
    if p.flow == "github_actions":
        need(bool(p.audience), "audience (the aud your database's oauth.issuers row accepts)")
    if p.flow == "command":
        need(bool(p.command), "command")
