"""All settings, in one typed object, loaded from defaults, a TOML file and the environment.

Precedence (later wins): built-in defaults < TOML file (``--config FILE`` or ``$ROOM_SUPERVISOR_CONFIG``)
< environment variables < command-line flags. The environment variables are the ones LiveKit and Redis users
already have (``LIVEKIT_URL``, ``LIVEKIT_API_KEY``, ``LIVEKIT_API_SECRET``, ``REDIS_URL``) plus
``RS_<SECTION>_<NAME>`` for every other setting (for example ``RS_DAEMON_DRAIN_TIMEOUT=20``).

Secrets never appear in ``repr``/logs: :meth:`Settings.redacted` is what gets printed.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit
from typing import Any, Mapping

import msgspec

from eventstore.keys import InvalidKeyPart, Keys


class SettingsError(ValueError):
    """The configuration is invalid; the message says which setting and why."""


class LiveKitSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str = "ws://127.0.0.1:7880"
    api_key: str = "devkey"
    api_secret: str = "secret"
    token_ttl: float = 600.0  # seconds; the server refreshes tokens of connected clients itself


class RedisSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "rs"
    partitions: int = 16  # feed partitions; fixed in Redis by the first writer
    stream_maxlen: int = 0  # 0 keeps every event (the log is the source of truth)


class WriterSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    max_batch: int = 256
    max_pending: int = 10_000
    max_block: float = 0.5  # longest an append may wait for room in the queue before spilling to the spool
    spool_dir: str = "/var/lib/room-supervisor/spool"
    spool_max_bytes: int = 1 << 30
    spool_fsync: bool = False


class DaemonSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: str = ""  # empty: hostname-pid
    max_rooms: int = 200
    default_pipeline: str = "listen"
    drain_timeout: float = 25.0  # keep below systemd's TimeoutStopSec
    lease_ttl: float = 10.0
    reconcile_interval: float = 1.0
    rejoin_base: float = 0.5
    rejoin_max: float = 30.0
    restart_budget: int = 5  # pipeline crashes per room within restart_window before the room is failed
    restart_window: float = 300.0
    http_host: str = "127.0.0.1"
    http_port: int = 9108  # 0 disables the HTTP endpoint
    watchdog_interval: float = 0.0  # 0: from $WATCHDOG_USEC
    log_level: str = "INFO"


class ConsumerSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    lease_ms: int = 10_000
    block_ms: int = 1000
    chunk: int = 1000


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    livekit: LiveKitSettings = msgspec.field(default_factory=LiveKitSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    writer: WriterSettings = msgspec.field(default_factory=WriterSettings)
    daemon: DaemonSettings = msgspec.field(default_factory=DaemonSettings)
    consumer: ConsumerSettings = msgspec.field(default_factory=ConsumerSettings)

    def redacted(self) -> dict[str, Any]:
        data = msgspec.to_builtins(self)
        data["livekit"]["api_secret"] = "***" if self.livekit.api_secret else ""
        data["redis"]["url"] = _redact_url(self.redis.url)
        return data

    def __repr__(self) -> str:
        return f"Settings({self.redacted()!r})"


SECTIONS: dict[str, type[msgspec.Struct]] = {
    "livekit": LiveKitSettings,
    "redis": RedisSettings,
    "writer": WriterSettings,
    "daemon": DaemonSettings,
    "consumer": ConsumerSettings,
}

# Well-known variables, mapped to (section, field).
ENV_ALIASES: dict[str, tuple[str, str]] = {
    "LIVEKIT_URL": ("livekit", "url"),
    "LIVEKIT_API_KEY": ("livekit", "api_key"),
    "LIVEKIT_API_SECRET": ("livekit", "api_secret"),
    "REDIS_URL": ("redis", "url"),
}


_SECRET_QUERY_KEYS = {"password", "pass", "passwd", "secret", "token", "auth"}


def _redact_url(url: str) -> str:
    """``url`` with its password (userinfo or query parameter) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{k}=***" if k.lower() in _SECRET_QUERY_KEYS else f"{k}={v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    out = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else netloc + parts.path
    return out + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


redact_url = _redact_url


def env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Settings named by environment variables, as strings grouped by section."""
    out: dict[str, dict[str, str]] = {}
    for name, (section, field) in ENV_ALIASES.items():
        if environ.get(name):
            out.setdefault(section, {})[field] = environ[name]
    for name, value in environ.items():
        if not name.startswith("RS_"):
            continue
        parts = name[3:].lower().split("_", 1)
        if len(parts) != 2 or parts[0] not in SECTIONS:
            continue
        section, field = parts
        if field not in SECTIONS[section].__struct_fields__:
            raise SettingsError(f"environment variable {name}: no setting {section}.{field}")
        out.setdefault(section, {})[field] = value
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    merged = {k: dict(v) for k, v in base.items()}
    for section, values in extra.items():
        merged.setdefault(section, {}).update(values)
    return merged


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build :class:`Settings` from the file (if any), the environment and explicit overrides.

    Raises :class:`SettingsError` for an unreadable or malformed file, an unknown section or key, or a value
    of the wrong type, naming the setting.
    """
    environ = os.environ if environ is None else environ
    if path is None and environ.get("ROOM_SUPERVISOR_CONFIG"):
        path = environ["ROOM_SUPERVISOR_CONFIG"]
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"config file {path} cannot be read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
        for section, values in data.items():
            if section not in SECTIONS:
                raise SettingsError(f"config file {path}: unknown section [{section}]")
            if not isinstance(values, dict):
                raise SettingsError(f"config file {path}: [{section}] must be a table")
    data = _merge(data, env_overrides(environ))
    data = _merge(data, overrides or {})
    try:
        settings = msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid setting: {exc}") from None
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    """Checks that types alone cannot express."""
    if not s.livekit.url.startswith(("ws://", "wss://", "http://", "https://")):
        raise SettingsError(f"livekit.url must start with ws://, wss://, http:// or https://, got {s.livekit.url!r}")
    if not s.livekit.api_key or not s.livekit.api_secret:
        raise SettingsError("livekit.api_key and livekit.api_secret must be set")
    if not s.redis.url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(f"redis.url must start with redis://, rediss:// or unix://, got {_redact_url(s.redis.url)!r}")
    positive = {
        "redis.partitions": s.redis.partitions, "writer.max_batch": s.writer.max_batch,
        "writer.max_pending": s.writer.max_pending, "daemon.max_rooms": s.daemon.max_rooms,
        "daemon.drain_timeout": s.daemon.drain_timeout, "daemon.lease_ttl": s.daemon.lease_ttl,
        "daemon.reconcile_interval": s.daemon.reconcile_interval, "livekit.token_ttl": s.livekit.token_ttl,
        "consumer.lease_ms": s.consumer.lease_ms, "consumer.chunk": s.consumer.chunk,
    }
    for name, value in positive.items():
        if value <= 0:
            raise SettingsError(f"{name} must be positive, got {value}")
    if s.writer.max_block < 0 or s.redis.stream_maxlen < 0:
        raise SettingsError("writer.max_block and redis.stream_maxlen must not be negative")
    if not 0 <= s.daemon.http_port <= 65535:
        raise SettingsError(f"daemon.http_port must be 0..65535, got {s.daemon.http_port}")
    if s.daemon.rejoin_base <= 0 or s.daemon.rejoin_max < s.daemon.rejoin_base:
        raise SettingsError("daemon.rejoin_base must be positive and not above daemon.rejoin_max")
    try:
        Keys(s.redis.prefix)
    except InvalidKeyPart as exc:
        raise SettingsError(f"redis.prefix: {exc}") from None
    if s.daemon.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"daemon.log_level must be DEBUG, INFO, WARNING or ERROR, got {s.daemon.log_level!r}")
