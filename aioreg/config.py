"""Typed configuration: one TOML file, then ``AIOREG_*`` environment overrides, then CLI flags.

Every option has a default here, so the registry runs with no file at all (the
embedded default: SQLite + local disk under ``./data``). ``conf/aioreg.toml``
documents each option; a test keeps the two in step.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec


class ConfigError(Exception):
    """The configuration file or an override is malformed."""


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    listen: str = "0.0.0.0:5000"
    access_log: bool = True
    shutdown_timeout: float = 30.0
    client_max_header_bytes: int = 16384
    body_read_timeout: float = 60.0

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


class StorageConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    data_dir: str = "./data"
    chunk_min_length: int = 1048576
    write_buffer_bytes: int = 1048576
    upload_session_ttl: float = 86400.0
    index_busy_timeout: float = 10.0


class LimitsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    manifest_max_bytes: int = 4194304
    page_size_max: int = 10000
    requests_per_second: float = 0.0
    request_burst: int = 100
    max_concurrent_uploads: int = 256
    read_cache_bytes: int = 67108864
    manifest_memory_bytes: int = 67108864


class AuthConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = False
    service: str = "aioreg"
    realm: str = ""
    token_ttl: float = 300.0
    refresh_token_ttl: float = 2592000.0
    allow_basic: bool = True
    admin_user: str = "admin"
    admin_password: str = ""
    default_visibility: str = "private"
    failed_login_limit: int = 5
    failed_login_window: float = 60.0


class GcConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    interval: float = 0.0
    grace_period: float = 3600.0
    delete_untagged: bool = False


class RetentionConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    interval: float = 0.0


class EventsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How much history the activity log and the audit log keep (each; 0: no limit)."""

    max_age_days: float = 90.0
    max_rows: int = 1000000


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    gc: GcConfig = msgspec.field(default_factory=GcConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    events: EventsConfig = msgspec.field(default_factory=EventsConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.storage.data_dir).expanduser().resolve()


# Short names documented in the README for the most common overrides.
ENV_ALIASES: dict[str, tuple[str, str]] = {
    "AIOREG_LISTEN": ("server", "listen"),
    "AIOREG_DATA_DIR": ("storage", "data_dir"),
    "AIOREG_AUTH": ("auth", "enabled"),
}


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"listen address must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``AIOREG_<SECTION>_<OPTION>`` (and the aliases) as a nested mapping of strings."""
    sections = {
        field: set(type_.__struct_fields__)
        for field, type_ in (
            ("server", ServerConfig),
            ("storage", StorageConfig),
            ("limits", LimitsConfig),
            ("auth", AuthConfig),
            ("gc", GcConfig),
            ("retention", RetentionConfig),
            ("events", EventsConfig),
        )
    }
    found: dict[str, dict[str, str]] = {}
    for key, value in environ.items():
        if key in ENV_ALIASES:
            section, option = ENV_ALIASES[key]
        elif key.startswith("AIOREG_"):
            section, _, option = key[len("AIOREG_") :].lower().partition("_")
            if section not in sections or option not in sections[section]:
                continue
        else:
            continue
        found.setdefault(section, {})[option] = value
    return found


def _merge(base: dict[str, Any], overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in overrides.items():
        merged.setdefault(section, {}).update(values)
    return merged


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build the effective config: defaults < file < environment < explicit overrides."""
    environ = os.environ if environ is None else environ
    path = path or environ.get("AIOREG_CONFIG") or None
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    raw = _merge(raw, _env_overrides(environ))
    raw = _merge(raw, overrides or {})
    try:
        config = msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
    split_listen(config.server.listen)
    if config.auth.default_visibility not in ("public", "private"):
        raise ConfigError("auth.default_visibility must be 'public' or 'private'")
    _validate_memory(config)
    return config


def _validate_memory(config: Config) -> None:
    """Byte budgets and history limits must be usable as given."""
    limits, events = config.limits, config.events
    if limits.read_cache_bytes < 0:
        raise ConfigError("limits.read_cache_bytes must be >= 0 (0 turns the cache off)")
    if limits.manifest_memory_bytes < limits.manifest_max_bytes:
        raise ConfigError(
            "limits.manifest_memory_bytes must be at least limits.manifest_max_bytes, "
            "or the largest manifest could never be accepted"
        )
    if events.max_age_days < 0 or events.max_rows < 0:
        raise ConfigError("events.max_age_days and events.max_rows must be >= 0 (0: no limit)")
