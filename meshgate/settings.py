"""The one registry of server settings.

Each setting has a name, a type, a default, an environment variable and a help text. The CLI options
of `meshgate serve`, the `server:` section of mesh.yaml and docs/configuration.md all come from here
(a test fails when the docs drift). Precedence: command-line flag > environment > mesh.yaml > default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshgate.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    name: str
    type: type
    default: Any
    help: str

    @property
    def env(self) -> str:
        return "MESHGATE_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("host", str, "127.0.0.1", "Address to listen on."),
    Setting("port", int, 4000, "Port to listen on."),
    Setting("workers", int, 1, "Worker processes; more than 1 needs `redis_url` so limits and budgets stay exact."),
    Setting("data_dir", str, "./.meshgate", "Directory for the SQLite database, keys and state."),
    Setting(
        "model_cache",
        str,
        "",
        "Directory where models shipped as split packages are assembled once, shared by every data dir; "
        "default: `$XDG_CACHE_HOME/meshgate/models` or `~/.cache/meshgate/models`.",
    ),
    Setting(
        "database_url",
        str,
        "",
        "Database URL (`sqlite:///path` or `postgresql://...`); default: SQLite in the data dir.",
    ),
    Setting("max_body_bytes", int, 8 * 1024 * 1024, "Largest accepted request body, in bytes (413 above)."),
    Setting("request_timeout", float, 600.0, "Seconds a whole call to a model may take before 504."),
    Setting("shutdown_timeout", float, 30.0, "Seconds to let in-flight requests finish on SIGINT/SIGTERM."),
    Setting(
        "gc_full_interval",
        float,
        600.0,
        "Python's full garbage collections run when no request is in flight, or at the latest every this "
        "many seconds under unbroken load (their pause grows with open streams); 0: the interpreter's own.",
    ),
    Setting("auth", bool, True, "Require API keys; `--no-auth` is allowed only on a loopback host."),
    Setting("redis_url", str, "", "Redis for rate limits shared by several replicas (`redis://host:6379/0`)."),
    Setting("oidc_jwks", str, "", "JWKS (file path or URL) to accept OIDC/JWT bearer tokens besides keys."),
    Setting("oidc_issuer", str, "", "Required `iss` of OIDC tokens."),
    Setting("oidc_audience", str, "", "Required `aud` of OIDC tokens."),
    Setting("oidc_team_claim", str, "team", "The token claim that names the caller's team."),
    Setting("oidc_roles_claim", str, "roles", "The token claim with the caller's roles (admin, developer, app)."),
    Setting("oidc_groups_claim", str, "groups", "The token claim with the caller's groups (knowledge-bank ACLs)."),
    Setting("audit_content", str, "off", "Prompts and responses in the audit log: off, redacted or full."),
    Setting(
        "audit_anchor",
        str,
        "",
        "File every audit checkpoint is also appended to, outside the database (`audit verify` compares the "
        "two); default `<data dir>/audit-anchor.log`; `off` disables it.",
    ),
    Setting("log_level", str, "info", "Log level: debug, info, warning, error."),
    Setting("access_log", bool, False, "Log one line per HTTP request."),
)

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def default_model_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meshgate" / "models"


def _coerce(setting: Setting, value: Any, source: str) -> Any:
    if setting.type is bool and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{source}: {setting.name}: expected a boolean, got {value!r}")
    try:
        return setting.type(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {setting.name}: expected {setting.type.__name__}, got {value!r}") from None


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    workers: int
    data_dir: Path
    model_cache: str
    database_url: str
    max_body_bytes: int
    request_timeout: float
    shutdown_timeout: float
    gc_full_interval: float
    auth: bool
    redis_url: str
    oidc_jwks: str
    oidc_issuer: str
    oidc_audience: str
    oidc_team_claim: str
    oidc_roles_claim: str
    oidc_groups_claim: str
    audit_content: str
    audit_anchor: str
    log_level: str
    access_log: bool

    @property
    def resolved_model_cache(self) -> Path:
        return Path(self.model_cache).expanduser() if self.model_cache else default_model_cache()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'meshgate.db').resolve()}"


def resolve_settings(
    cli: dict[str, Any], file_values: dict[str, Any], config_path: str = "mesh.yaml"
) -> ServerSettings:
    """Merge the sources by precedence. `cli` holds only the flags the user actually gave."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if cli.get(setting.name) is not None:
            values[setting.name] = _coerce(setting, cli[setting.name], setting.flag)
        elif os.environ.get(setting.env) not in (None, ""):
            values[setting.name] = _coerce(setting, os.environ[setting.env], setting.env)
        elif setting.name in file_values:
            values[setting.name] = _coerce(setting, file_values[setting.name], f"{config_path}: server")
        else:
            values[setting.name] = setting.default
    unknown = set(file_values) - set(SETTINGS_BY_NAME)
    if unknown:
        raise ConfigError(
            f"{config_path}: server.{sorted(unknown)[0]}: unknown setting (known: {', '.join(SETTINGS_BY_NAME)})"
        )
    if not 0 < values["port"] < 65536:
        raise ConfigError(f"port: {values['port']} is not a valid TCP port")
    if values["workers"] < 1:
        raise ConfigError("workers: must be at least 1")
    if values["workers"] > 1 and not values["redis_url"]:
        raise ConfigError(
            f"workers: {values['workers']} workers need --redis-url, so that rate limits and budgets hold "
            "across them (each worker would otherwise count alone)"
        )
    if values["max_body_bytes"] < 1024:
        raise ConfigError("max_body_bytes: must be at least 1024")
    if values["audit_content"] not in ("off", "redacted", "full"):
        raise ConfigError(f"audit_content: {values['audit_content']!r} is not one of off, redacted, full")
    if values["log_level"] not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level: {values['log_level']!r} is not one of debug, info, warning, error")
    if not values["auth"] and values["host"] not in LOOPBACK:
        raise ConfigError(
            f"auth: --no-auth is allowed only on a loopback host (127.0.0.1, ::1, localhost), not {values['host']}"
        )
    values["data_dir"] = Path(values["data_dir"]).expanduser()
    return ServerSettings(**values)
