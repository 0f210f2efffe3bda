"""Typed configuration: one TOML file, then ``AIOREG_*`` environment overrides, then CLI flags.

Every option has a default here, so the registry runs with no file at all (the
embedded default: SQLite + local disk under ``./data``). ``conf/aioreg.toml``
documents each option; a test keeps the two in step.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import pwd
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec


class ConfigError(Exception):
    """The configuration file or an override is malformed."""


# Every numeric option has one of these types; msgspec refuses values out of range at
# load. Non-negative where 0 has a meaning (off, no cap, at once), positive otherwise.
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    listen: str = "0.0.0.0:5000"
    access_log: bool = True
    shutdown_timeout: NonNegativeFloat = 30.0
    client_max_header_bytes: PositiveInt = 16384
    body_read_timeout: PositiveFloat = 60.0
    header_read_timeout: PositiveFloat = 30.0
    idle_timeout: PositiveFloat = 75.0
    send_timeout: PositiveFloat = 60.0
    # Processes serving the port (SO_REUSEPORT) and the index; see aioreg.api.supervisor.
    workers: PositiveInt = 1

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


class StorageConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    data_dir: str = "./data"
    chunk_min_length: NonNegativeInt = 1048576
    write_buffer_bytes: PositiveInt = 1048576
    upload_session_ttl: PositiveFloat = 86400.0
    index_busy_timeout: NonNegativeFloat = 10.0


class LimitsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    manifest_max_bytes: PositiveInt = 4194304
    page_size_max: PositiveInt = 10000
    requests_per_second: NonNegativeFloat = 0.0
    request_burst: PositiveInt = 100
    max_concurrent_uploads: NonNegativeInt = 256
    max_upload_sessions: NonNegativeInt = 5000
    max_upload_sessions_per_client: NonNegativeInt = 500
    read_cache_bytes: NonNegativeInt = 67108864
    manifest_memory_bytes: PositiveInt = 67108864


class AuthConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = False
    service: str = "aioreg"
    realm: str = ""
    token_ttl: PositiveFloat = 300.0
    refresh_token_ttl: PositiveFloat = 2592000.0
    allow_basic: bool = True
    admin_user: str = "admin"
    admin_password: str = ""
    default_visibility: str = "private"
    failed_login_limit: PositiveInt = 5
    failed_login_user_limit: PositiveInt = 50
    failed_login_address_limit: PositiveInt = 50
    failed_login_window: PositiveFloat = 60.0
    failed_login_tracked_max: Annotated[int, msgspec.Meta(ge=3)] = 10000


class GcConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    interval: NonNegativeFloat = 0.0
    grace_period: NonNegativeFloat = 3600.0
    delete_untagged: bool = False


class RetentionConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    interval: NonNegativeFloat = 0.0


class TransferConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """zstd compression of ``aioreg export`` and ``GET /api/v1/export`` (flags override it);
    the most new blob bytes one ``POST /api/v1/import`` may write (0: the free space)."""

    zstd_level: Annotated[int, msgspec.Meta(ge=1, le=22)] = 3
    zstd_threads: NonNegativeInt = 0
    import_max_bytes: NonNegativeInt = 0


class EventsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How much history the activity log and the audit log keep (each; 0: no limit)."""

    max_age_days: NonNegativeFloat = 90.0
    max_rows: NonNegativeInt = 1000000


class MetricsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``/metrics``: open to loopback peers; others need ``token`` (or ``token_env``) or an admin."""

    enabled: bool = True
    open_on_loopback: bool = True
    token: str = ""
    token_env: str = ""
    storage_refresh_seconds: NonNegativeFloat = 15.0
    namespace_series_max: NonNegativeInt = 100

    def __repr__(self) -> str:
        return f"MetricsConfig(enabled={self.enabled!r})"

    def secret(self) -> str:
        """The scrape token, from the file or the environment variable the config names."""
        if self.token_env:
            return os.environ.get(self.token_env, "")
        return self.token


class HealthConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``/readyz`` reports unready below this much free space in the data directory."""

    min_free_bytes: NonNegativeInt = 104857600


class LogConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``plain`` lines, ``json`` objects (one per line), or ``auto``: plain on a terminal."""

    format: str = "plain"


LOG_FORMATS = ("plain", "json", "auto")


class WebhooksConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The webhook outbox and its delivery worker (endpoints are managed through /api/v1)."""

    concurrency: PositiveInt = 8
    timeout: PositiveFloat = 10.0
    max_attempts: PositiveInt = 8
    backoff_base: PositiveFloat = 1.0
    backoff_max: PositiveFloat = 300.0
    outbox_max_rows: PositiveInt = 100000
    quota_warning_percent: Annotated[int, msgspec.Meta(ge=1, le=100)] = 90
    poll_interval: PositiveFloat = 2.0
    public_url: str = ""


WEBHOOK_EVENTS = (
    "push",
    "pull",
    "delete",
    "tag_created",
    "tag_deleted",
    "repository_created",
    "repository_deleted",
    "quota_warning",
    "quota_exceeded",
)
WEBHOOK_FORMATS = ("cloudevents", "distribution")
WEBHOOK_SECRET_LENGTH = (16, 256)
WEBHOOK_TEXT_MAX = 2048
WEBHOOK_FILTER_ITEMS_MAX = 50
WEBHOOK_URL_RE = re.compile(r"https?://[^/\s@?#]+(?:[/?]\S*)?")


class WebhookEndpointConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One webhook endpoint: a ``[[webhook]]`` table, or one added through /api/v1 or the CLI.

    The secret signing its requests comes from ``secret`` (in the file),
    ``secret_env`` (an environment variable's name) or ``secret_file`` (a path);
    never logged. ``namespace`` empty: registry-wide. Empty filters let all through.
    """

    url: str
    secret: str = ""
    secret_env: str = ""
    secret_file: str = ""
    namespace: str = ""
    events: list[str] = msgspec.field(default_factory=list)
    repository_pattern: str = "*"
    media_types: list[str] = msgspec.field(default_factory=list)
    format: str = "cloudevents"
    enabled: bool = True

    def __repr__(self) -> str:
        return f"WebhookEndpointConfig(url={self.url!r}, namespace={self.namespace!r})"

    def resolved_secret(self) -> str:
        """The secret, from wherever the config says it is."""
        if self.secret_env:
            return os.environ.get(self.secret_env, "")
        if self.secret_file:
            return Path(self.secret_file).expanduser().read_text().strip()
        return self.secret


class ProxyConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One pull-through proxy: a read-only local namespace in front of an upstream registry.

    Credentials come from ``password`` (in the file), ``password_env`` (the name of an
    environment variable) or ``password_file`` (a path, read at start); never logged.
    """

    namespace: str
    upstream: str
    username: str = ""
    password: str = ""
    password_env: str = ""
    password_file: str = ""
    upstream_prefix: str = ""
    revalidate_interval: NonNegativeFloat = 300.0
    serve_stale: bool = True
    max_bytes: NonNegativeInt = 0
    connect_timeout: PositiveFloat = 10.0
    read_timeout: PositiveFloat = 60.0
    max_connections: PositiveInt = 32

    def __repr__(self) -> str:
        return f"ProxyConfig(namespace={self.namespace!r}, upstream={self.upstream!r})"

    @property
    def upstream_host(self) -> str:
        """``host[:port]`` of the upstream, what containerd sends as ``?ns=``."""
        return self.upstream.split("://", 1)[-1].split("/", 1)[0]

    def secret(self) -> str:
        """The upstream password, from wherever the config says it is."""
        if self.password_env:
            return os.environ.get(self.password_env, "")
        if self.password_file:
            return Path(self.password_file).expanduser().read_text().strip()
        return self.password


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    gc: GcConfig = msgspec.field(default_factory=GcConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    events: EventsConfig = msgspec.field(default_factory=EventsConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    transfer: TransferConfig = msgspec.field(default_factory=TransferConfig)
    webhooks: WebhooksConfig = msgspec.field(default_factory=WebhooksConfig)
    proxy: list[ProxyConfig] = msgspec.field(default_factory=list)
    webhook: list[WebhookEndpointConfig] = msgspec.field(default_factory=list)

    @property
    def data_path(self) -> Path:
        return Path(self.storage.data_dir).expanduser().resolve()


# Short names documented in the README for the most common overrides.
ENV_ALIASES: dict[str, tuple[str, str]] = {
    "AIOREG_LISTEN": ("server", "listen"),
    "AIOREG_DATA_DIR": ("storage", "data_dir"),
    "AIOREG_AUTH": ("auth", "enabled"),
}


# Sections that are lists of tables (``[[proxy]]``, ``[[webhook]]``): set in the file only.
LIST_SECTIONS = frozenset({"proxy", "webhook"})
# AIOREG_* variables that are not options.
ENV_OTHER = frozenset({"AIOREG_CONFIG"})
MAX_PORT = 65535

log = logging.getLogger("aioreg.config")


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"listen address must be HOST:PORT, got {listen!r}")
    if int(port) > MAX_PORT:
        raise ConfigError(f"listen port must be 0-{MAX_PORT} (0: any free port), got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _env_names() -> dict[str, tuple[str, str]]:
    """Every ``AIOREG_<SECTION>_<OPTION>`` name and the aliases, to (section, option)."""
    default = Config()
    names = dict(ENV_ALIASES)
    for section in Config.__struct_fields__:
        if section in LIST_SECTIONS:
            continue
        for option in type(getattr(default, section)).__struct_fields__:
            names[f"AIOREG_{section}_{option}".upper()] = (section, option)
    return names


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``AIOREG_<SECTION>_<OPTION>`` (and the aliases) as a nested mapping of strings.

    An ``AIOREG_`` name that is no option is most likely a typo: it is warned about
    (with the nearest real names) rather than silently ignored.
    """
    names = _env_names()
    found: dict[str, dict[str, str]] = {}
    for key, value in environ.items():
        if key in names:
            section, option = names[key]
            found.setdefault(section, {})[option] = value
        elif key.startswith("AIOREG_") and key not in ENV_OTHER:
            close = difflib.get_close_matches(key, [*names, *ENV_OTHER], n=2, cutoff=0.75)
            log.warning(
                "ignoring unknown environment variable %s%s",
                key,
                f" (did you mean {' or '.join(close)}?)" if close else "",
            )
    return found


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Options override option by option; a list section (``proxy``) is replaced whole."""
    merged = {
        section: values if section in LIST_SECTIONS else dict(values)
        for section, values in base.items()
    }
    for section, values in overrides.items():
        if section in LIST_SECTIONS:
            merged[section] = list(values)
        else:
            merged.setdefault(section, {}).update(values)
    return merged


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
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
    _refuse_infinite(config)
    if config.auth.default_visibility not in ("public", "private"):
        raise ConfigError("auth.default_visibility must be 'public' or 'private'")
    if config.log.format not in LOG_FORMATS:
        raise ConfigError(f"log.format must be one of {', '.join(LOG_FORMATS)}")
    if config.metrics.token and config.metrics.token_env:
        raise ConfigError("give one of metrics.token, metrics.token_env")
    _validate_memory(config)
    _validate_proxies(config)
    _validate_webhooks(config)
    return config


PROXY_NAMESPACE_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")


def _validate_proxies(config: Config) -> None:
    """Each proxy needs a namespace of its own (and must pass ``validate_proxy``)."""
    seen: set[str] = set()
    for proxy in config.proxy:
        validate_proxy(proxy)
        if proxy.namespace in seen:
            raise ConfigError(f"proxy {proxy.namespace!r}: namespace is configured twice")
        seen.add(proxy.namespace)


def validate_proxy(proxy: ProxyConfig) -> None:
    """One namespace component, an http(s) upstream, at most one password source.

    Shared by the config file and proxies added through ``/api/v1`` or the CLI.
    """
    where = f"proxy {proxy.namespace!r}"
    if not PROXY_NAMESPACE_RE.fullmatch(proxy.namespace):
        raise ConfigError(f"{where}: namespace must be one lowercase path component")
    if not re.fullmatch(r"https?://[^/\s@]+/?", proxy.upstream):
        # No user:password@ in it (URLs are logged): credentials have their own options.
        raise ConfigError(f"{where}: upstream must be http(s)://host[:port]")
    if sum(map(bool, (proxy.password, proxy.password_env, proxy.password_file))) > 1:
        raise ConfigError(f"{where}: give one of password, password_env, password_file")
    if proxy.upstream_prefix.strip("/") != proxy.upstream_prefix:
        raise ConfigError(f"{where}: upstream_prefix must not start or end with /")
    for option in ("revalidate_interval", "connect_timeout", "read_timeout"):
        if not math.isfinite(getattr(proxy, option)):
            raise ConfigError(f"{where}: {option} must be finite")


def _validate_webhooks(config: Config) -> None:
    """The worker's settings, and each ``[[webhook]]``: valid, with a usable secret, once."""
    webhooks = config.webhooks
    seen: set[tuple[str, str]] = set()
    for endpoint in config.webhook:
        validate_webhook(endpoint)
        where = f"webhook {endpoint.url!r}"
        try:
            secret = endpoint.resolved_secret()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read secret_file: {exc.strerror}") from None
        if not secret:
            raise ConfigError(f"{where}: give its secret (secret, secret_env or secret_file)")
        _check_secret(where, secret)
        if (endpoint.url, endpoint.namespace) in seen:
            raise ConfigError(f"{where}: configured twice for the same namespace")
        seen.add((endpoint.url, endpoint.namespace))
    if webhooks.backoff_max < webhooks.backoff_base:
        raise ConfigError("webhooks.backoff_max must be at least webhooks.backoff_base")
    if webhooks.public_url and not re.fullmatch(r"https?://[^/\s@]+(/\S*)?", webhooks.public_url):
        raise ConfigError("webhooks.public_url must be http(s)://host[:port][/path]")


def validate_webhook(endpoint: WebhookEndpointConfig) -> None:
    """An http(s) URL without credentials, known events and format, bounded filters.

    Shared by the config file and endpoints added through ``/api/v1`` or the CLI.
    """
    where = f"webhook {endpoint.url[:100]!r}"
    if len(endpoint.url) > WEBHOOK_TEXT_MAX or not WEBHOOK_URL_RE.fullmatch(endpoint.url):
        # No user:password@ (URLs are listed): the secret signs instead.
        raise ConfigError(f"{where}: url must be http(s)://host[:port][/path], without credentials")
    if sum(map(bool, (endpoint.secret, endpoint.secret_env, endpoint.secret_file))) > 1:
        raise ConfigError(f"{where}: give one of secret, secret_env, secret_file")
    if endpoint.secret:
        _check_secret(where, endpoint.secret)
    if endpoint.namespace and not PROXY_NAMESPACE_RE.fullmatch(endpoint.namespace):
        raise ConfigError(f"{where}: namespace must be one lowercase path component")
    unknown = sorted(set(endpoint.events) - set(WEBHOOK_EVENTS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown events {', '.join(unknown)[:200]}; "
            f"known: {', '.join(WEBHOOK_EVENTS)}"
        )
    if not endpoint.repository_pattern or len(endpoint.repository_pattern) > WEBHOOK_TEXT_MAX:
        raise ConfigError(f"{where}: repository_pattern is a glob of 1 to 2048 characters")
    if len(endpoint.media_types) > WEBHOOK_FILTER_ITEMS_MAX or any(
        not m or len(m) > 255 for m in endpoint.media_types
    ):
        raise ConfigError(
            f"{where}: media_types has at most {WEBHOOK_FILTER_ITEMS_MAX} types of 1-255 characters"
        )
    if endpoint.format not in WEBHOOK_FORMATS:
        raise ConfigError(f"{where}: format must be one of {', '.join(WEBHOOK_FORMATS)}")


def _check_secret(where: str, secret: str) -> None:
    low, high = WEBHOOK_SECRET_LENGTH
    if not low <= len(secret) <= high:
        raise ConfigError(f"{where}: a secret has {low} to {high} characters")


def _refuse_infinite(config: Config) -> None:
    """``inf`` passes a lower bound but is no usable size or timeout."""
    for section in Config.__struct_fields__:
        values = getattr(config, section)
        for item in values if isinstance(values, list) else [values]:
            for option in item.__struct_fields__:
                value = getattr(item, option)
                if isinstance(value, float) and not math.isfinite(value):
                    raise ConfigError(f"invalid configuration: {section}.{option} must be finite")


def check_data_dir(path: Path) -> None:
    """Refuse at start a data directory this process could not keep writing to.

    Otherwise the registry starts and answers 500 to every push. Foreign-owned
    entries are refused even when writable (root): files a command creates there
    would then belong to a user the server does not run as.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create data directory {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise ConfigError(f"data directory {path} is not a directory")
    uid = os.geteuid()
    entries = [path, *(path / name for name in ("index.db", "index.db-wal", "index.db-shm"))]
    entries += [path / "blobs", path / "uploads"]
    for entry in entries:
        try:
            owner = entry.stat().st_uid
        except FileNotFoundError:
            continue
        if owner != uid:
            raise ConfigError(
                f"data directory entry {entry} belongs to {_user(owner)}, not to "
                f"{_user(uid)} running aioreg; chown -R it or run aioreg as its owner"
            )
        if not os.access(entry, os.R_OK | os.W_OK | (os.X_OK if entry.is_dir() else 0)):
            raise ConfigError(f"data directory entry {entry} is not writable by {_user(uid)}")


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _validate_memory(config: Config) -> None:
    """Byte budgets must be usable as given."""
    limits = config.limits
    if limits.manifest_memory_bytes < limits.manifest_max_bytes:
        raise ConfigError(
            "limits.manifest_memory_bytes must be at least limits.manifest_max_bytes, "
            "or the largest manifest could never be accepted"
        )
