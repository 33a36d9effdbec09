"""All settings, in one typed object, loaded from defaults, a TOML file and the environment.

Precedence (later wins): built-in defaults < TOML file (``--config FILE`` or ``$ROOM_SUPERVISOR_CONFIG``)
< environment variables < command-line flags. The environment variables are the ones LiveKit and Redis users
already have (``LIVEKIT_URL``, ``LIVEKIT_API_KEY``, ``LIVEKIT_API_SECRET``, ``REDIS_URL``) plus
``RS_<SECTION>_<NAME>`` for every other setting (for example ``RS_DAEMON_DRAIN_TIMEOUT=20``).

``[pipelines]`` names the user's pipelines: ``mybot = "mypkg.bot:factory"``. ``RS_PIPELINES_<NAME>`` adds or
replaces one (the name is the rest of the variable in lower case: ``RS_PIPELINES_MY_BOT`` is ``my_bot``; names
with capitals, ``.`` or ``-`` go in the file). ``echo`` and ``listen`` are built in and cannot be redefined.

Secrets never appear in ``repr``/logs: :meth:`Settings.redacted` is what gets printed, and :func:`redact` is
what every error message goes through.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import msgspec

from eventstore.connection import CLUSTER_SCHEMES, BadRedisUrl, cluster_seeds, is_cluster_url
from eventstore.keys import InvalidKeyPart, Keys
from transport.audio_format import AudioFormat
from transport.pipeline_names import BUILTIN_NAMES, check_target, is_name

from .redaction import redact as redact  # re-exported: the CLI and tests import them from settings
from .redaction import redact_url
from .redaction import url_secrets as url_secrets
from .settings_model import SECTIONS, TABLES, Settings, SettingsError
from .settings_model import (  # noqa: F401 - re-exported: every section is importable from here
    AudioSettings, ConsumerSettings, DaemonSettings, DispatchSettings, LiveKitSettings, RedisSettings,
    RetentionSettings, WebhookSettings, WriterSettings,
)


# Well-known variables, mapped to (section, field).
ENV_ALIASES: dict[str, tuple[str, str]] = {
    "LIVEKIT_URL": ("livekit", "url"),
    "LIVEKIT_API_KEY": ("livekit", "api_key"),
    "LIVEKIT_API_SECRET": ("livekit", "api_secret"),
    "REDIS_URL": ("redis", "url"),
}


def env_overrides(environ: Mapping[str, str],
                  sources: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Settings named by environment variables, as strings grouped by section; ``sources`` gets
    ``"section.field" -> "environment variable NAME"`` for each."""
    out: dict[str, dict[str, str]] = {}
    sources = {} if sources is None else sources
    for name, (section, field) in ENV_ALIASES.items():
        if environ.get(name):
            out.setdefault(section, {})[field] = environ[name]
            sources[f"{section}.{field}"] = f"environment variable {name}"
    for name, value in environ.items():
        if not name.startswith("RS_"):
            continue
        parts = name[3:].lower().split("_", 1)
        if len(parts) != 2 or parts[0] not in (*SECTIONS, *TABLES):
            continue
        section, field = parts
        if section not in TABLES and field not in SECTIONS[section].__struct_fields__:
            near = _nearest(field, SECTIONS[section].__struct_fields__)
            hint = f" (did you mean RS_{section.upper()}_{near.upper()}?)" if near else ""
            raise SettingsError(f"environment variable {name}: there is no setting {section}.{field}{hint}")
        if section not in TABLES and isinstance(getattr(SECTIONS[section](), field), list):
            value = [part.strip() for part in value.split(",") if part.strip()]  # a list: comma-separated
        out.setdefault(section, {})[field] = value
        sources[f"{section}.{field}"] = f"environment variable {name}"
    return out


def _nearest(word: str, known: Iterable[str]) -> str:
    """The known name closest to ``word`` (a typo's likely meaning), or ``""``."""
    found = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return found[0] if found else ""


def _check_file(path: str | os.PathLike[str], data: Mapping[str, Any], sources: dict[str, str]) -> None:
    """Sections and keys of a config file: known ones only (a typo gets the nearest known name)."""
    for section, values in data.items():
        if section not in SECTIONS and section not in TABLES:
            near = _nearest(section, (*SECTIONS, *TABLES))
            raise SettingsError(f"config file {path}: unknown section [{section}]"
                                + (f" (did you mean [{near}]?)" if near else ""))
        if not isinstance(values, dict):
            raise SettingsError(f"config file {path}: [{section}] must be a table")
        for key in values:
            if section not in TABLES and key not in SECTIONS[section].__struct_fields__:
                near = _nearest(key, SECTIONS[section].__struct_fields__)
                raise SettingsError(f"config file {path}: [{section}] has no setting {key!r}"
                                    + (f" (did you mean {near}?)" if near else ""))
            sources[f"{section}.{key}"] = f"config file {path}"


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
    sources: dict[str, str] = {}  # "section.field" -> where its value came from (the last that set it)
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_file(path)
        _check_file(path, data, sources)
        check_pipelines(data.get("pipelines", {}), f"config file {path}: ")
    data = _merge(data, env_overrides(environ, sources))
    for section, values in (overrides or {}).items():
        sources.update({f"{section}.{field}": _FLAGS.get(f"{section}.{field}", "the command line") for field in values})
    data = _merge(data, overrides or {})
    check_pipelines(data.get("pipelines", {}))
    try:
        settings = msgspec.convert(data, Settings, strict=False)
        validate(settings)
    except msgspec.ValidationError as exc:
        raise _with_source(SettingsError(f"invalid setting: {exc}", _setting_of(str(exc))), sources) from None
    except SettingsError as exc:
        raise _with_source(exc, sources) from None
    return settings


# Command-line flags that override a setting (supervisor.cli.main.settings_from).
_FLAGS = {"redis.url": "--redis-url", "redis.prefix": "--prefix"}


def _read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None


def _setting_of(message: str) -> str:
    """``section.field`` from msgspec's ``... - at `$.section.field```."""
    found = re.search(r"at `\$\.(\w+)\.(\w+)", message)
    return f"{found.group(1)}.{found.group(2)}" if found else ""


def _with_source(exc: SettingsError, sources: Mapping[str, str]) -> SettingsError:
    """``exc`` with where its setting's value came from (a file, an environment variable, a flag)."""
    source = sources.get(exc.setting)
    return SettingsError(f"{exc} (from {source})", exc.setting) if source else exc


def check_pipelines(table: Mapping[str, Any], where: str = "") -> None:
    """``[pipelines]``: names of ``[A-Za-z0-9_.-]``, not a built-in, each a ``module:function`` string."""
    for name, target in table.items():
        if not is_name(name):
            raise SettingsError(f"{where}pipelines: {name!r} is not a pipeline name (letters, digits, '_', '.', "
                                "'-'; at most 100)")
        if name in BUILTIN_NAMES:
            raise SettingsError(f"{where}pipelines.{name}: {name} is built in and cannot be redefined")
        if not isinstance(target, str):
            raise SettingsError(f"{where}pipelines.{name} must be a \"module:function\" string, got {target!r}")
        try:
            check_target(target)
        except ValueError as exc:
            raise SettingsError(f"{where}pipelines.{name}: {exc}") from None


def validate(s: Settings) -> None:
    """Checks that types alone cannot express."""
    check_pipelines(s.pipelines)
    if not s.livekit.url.startswith(("ws://", "wss://", "http://", "https://")):
        raise SettingsError(f"livekit.url must start with ws://, wss://, http:// or https://, got {s.livekit.url!r}",
                            "livekit.url")
    if not s.livekit.api_key or not s.livekit.api_secret:
        raise SettingsError("livekit.api_key and livekit.api_secret must be set",
                            "livekit.api_key" if not s.livekit.api_key else "livekit.api_secret")
    if not s.redis.url.startswith(("redis://", "rediss://", "unix://", *CLUSTER_SCHEMES)):
        raise SettingsError("redis.url must start with redis://, rediss://, unix:// or (a Redis Cluster) "
                            f"redis+cluster://, got {redact_url(s.redis.url)!r}", "redis.url")
    if is_cluster_url(s.redis.url):
        try:
            cluster_seeds(s.redis.url)
        except BadRedisUrl as exc:
            raise SettingsError(f"redis.url: {exc}", "redis.url") from None
    positive = {
        "redis.partitions": s.redis.partitions, "writer.max_batch": s.writer.max_batch,
        "writer.max_pending": s.writer.max_pending, "daemon.max_rooms": s.daemon.max_rooms,
        "daemon.drain_timeout": s.daemon.drain_timeout, "daemon.lease_ttl": s.daemon.lease_ttl,
        "daemon.outage_grace": s.daemon.outage_grace,
        "daemon.reconcile_interval": s.daemon.reconcile_interval, "livekit.token_ttl": s.livekit.token_ttl,
        "consumer.lease_ms": s.consumer.lease_ms, "consumer.chunk": s.consumer.chunk,
    }
    for name, value in positive.items():
        if value <= 0:
            raise SettingsError(f"{name} must be positive, got {value}", name)
    if s.daemon.max_stream_bytes < 0:
        raise SettingsError(f"daemon.max_stream_bytes must not be negative, got {s.daemon.max_stream_bytes}",
                            "daemon.max_stream_bytes")
    if s.writer.max_block < 0 or s.redis.stream_maxlen < 0:
        raise SettingsError("writer.max_block and redis.stream_maxlen must not be negative")
    if not 0 <= s.daemon.http_port <= 65535:
        raise SettingsError(f"daemon.http_port must be 0..65535, got {s.daemon.http_port}", "daemon.http_port")
    if s.daemon.rejoin_base <= 0 or s.daemon.rejoin_max < s.daemon.rejoin_base:
        raise SettingsError("daemon.rejoin_base must be positive and not above daemon.rejoin_max")
    if s.daemon.load_threshold <= 0:
        raise SettingsError(f"daemon.load_threshold must be positive, got {s.daemon.load_threshold}",
                            "daemon.load_threshold")
    _validate_livekit_side(s)
    try:
        audio_format(s)
    except ValueError as exc:
        raise SettingsError(f"audio.{exc}", f"audio.{str(exc).split(' ', 1)[0]}") from None
    try:
        Keys(s.redis.prefix)
    except InvalidKeyPart as exc:
        raise SettingsError(f"redis.prefix: {exc}", "redis.prefix") from None
    if s.daemon.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"daemon.log_level must be DEBUG, INFO, WARNING or ERROR, got {s.daemon.log_level!r}",
                            "daemon.log_level")


def _validate_livekit_side(s: Settings) -> None:
    """[dispatch] and [webhooks]."""
    if s.dispatch.pipeline and not is_name(s.dispatch.pipeline):
        raise SettingsError(f"dispatch.pipeline: {s.dispatch.pipeline!r} is not a pipeline name", "dispatch.pipeline")
    name = s.dispatch.agent_name
    if len(name) > 128 or any(not c.isprintable() for c in name):
        raise SettingsError(f"dispatch.agent_name must be at most 128 printable characters, got {name[:40]!r}",
                            "dispatch.agent_name")
    if not 0 < s.dispatch.target_load <= 1:
        raise SettingsError(f"dispatch.target_load must be in (0, 1], got {s.dispatch.target_load}",
                            "dispatch.target_load")
    path = s.webhooks.path
    if not path.startswith("/") or path in ("/healthz", "/metrics") or any(c in path for c in " ?#\r\n\t"):
        raise SettingsError(f"webhooks.path must be a path like /livekit/webhook (not /healthz or /metrics), "
                            f"got {path[:60]!r}", "webhooks.path")
    if s.webhooks.rooms not in ("supervised", "all"):
        raise SettingsError(f"webhooks.rooms must be \"supervised\" or \"all\", got {s.webhooks.rooms!r}",
                            "webhooks.rooms")
    if bool(s.webhooks.api_key) != bool(s.webhooks.api_secret):
        raise SettingsError("webhooks.api_key and webhooks.api_secret are set together (or both left empty: the "
                            "LiveKit key)", "webhooks.api_key" if not s.webhooks.api_key else "webhooks.api_secret")
    if not 0 <= s.redis.wait_replicas <= 16:
        raise SettingsError(f"redis.wait_replicas must be 0..16, got {s.redis.wait_replicas}", "redis.wait_replicas")
    if not (math.isfinite(s.redis.wait_timeout) and 0 < s.redis.wait_timeout <= 60):
        raise SettingsError(f"redis.wait_timeout must be in (0, 60] seconds, got {s.redis.wait_timeout!r}",
                            "redis.wait_timeout")
    r = s.retention
    for field, value, least in (("archive_after", r.archive_after, 0), ("keep_records", r.keep_records, 0),
                                ("tombstone_ttl", r.tombstone_ttl, 0), ("interval", r.interval, None),
                                ("lock_ttl", r.lock_ttl, None)):
        if not math.isfinite(value) or (value < 0 if least == 0 else value <= 0):
            raise SettingsError(f"retention.{field} must be {'at least 0' if least == 0 else 'positive'} and "
                                f"finite, got {value!r}", f"retention.{field}")
    for name in s.retention.projections:
        try:
            Keys().state("x", name)
        except InvalidKeyPart:
            raise SettingsError(f"retention.projections: {name!r} is not a projection name",
                                "retention.projections") from None
    if s.webhooks.enabled and not s.daemon.http_port:
        raise SettingsError("webhooks.enabled needs the HTTP endpoint (daemon.http_port is 0)", "webhooks.enabled")


def archive_of(s: Settings):  # noqa: ANN201 - eventstore.archive.DirectoryArchive | None, imported when used
    """The archive ``[retention] archive_dir`` names, or None (no archive: rooms stay in Redis)."""
    if not s.retention.archive_dir:
        return None
    from eventstore.archive import DirectoryArchive

    return DirectoryArchive(s.retention.archive_dir)


def audio_format(s: Settings) -> AudioFormat:
    """The ``[audio]`` settings as the sessions use them; ValueError naming the field for a value not allowed."""
    return AudioFormat(in_sample_rate=s.audio.in_sample_rate, out_sample_rate=s.audio.out_sample_rate,
                       frame_ms=s.audio.frame_ms)


# rtc's Rust engine logs these at ERROR each time a room closes or a bot leaves: routine, not errors.
_ROUTINE_LIVEKIT = ("data channel", "closed unexpectedly")
MIN_SECRET_BYTES = 32  # livekit-server refuses shorter API secrets outside dev mode; PyJWT warns below it


class _RoutineLiveKitNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and all(part in record.getMessage() for part in _ROUTINE_LIVEKIT):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def quiet_routine_noise(settings: Settings) -> None:
    """What a daemon logs once, not on every token or room close: a short LiveKit API secret is said once
    (PyJWT would warn at every token), and rtc's "data channel ... closed unexpectedly" at a room's close is
    logged at INFO, not ERROR."""
    livekit = logging.getLogger("livekit")
    if not any(isinstance(f, _RoutineLiveKitNoise) for f in livekit.filters):
        livekit.addFilter(_RoutineLiveKitNoise())
    size = len(settings.livekit.api_secret.encode("utf-8"))
    if size < MIN_SECRET_BYTES:
        warnings.filterwarnings("ignore", message="The HMAC key is .* bytes long")
        logging.getLogger("supervisor").warning(
            "livekit.api_secret is %d bytes; livekit-server refuses secrets under %d bytes outside dev mode",
            size, MIN_SECRET_BYTES)


def set_level(level: str) -> None:
    """Apply ``level`` (DEBUG, INFO, ...) to the root logger and to loguru, which pipecat logs through at DEBUG
    to stderr by default (a flood in the journal with many rooms)."""
    logging.getLogger().setLevel(level)
    try:
        from loguru import logger
    except ImportError:
        return
    logger.remove()
    logger.add(sys.stderr, level=level, format="{time:YYYY-MM-DD HH:mm:ss,SSS} {level} {name} {message}")


def reloadable(old: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """The settings a running daemon adopts on SIGHUP, and what it cannot adopt without a restart.

    [livekit] and [audio] (used by the next sessions), [webhooks] (read at each request) and [daemon] apply at
    once, except the daemon's id and HTTP address; [redis] and [writer] belong to connections and files already
    open, [dispatch] to the worker registration with LiveKit.
    """
    later = [f"[{section}]" for section in ("redis", "writer", "dispatch")
             if getattr(new, section) != getattr(old, section)]
    fixed = {name: getattr(old.daemon, name) for name in ("id", "http_host", "http_port")}
    later += [f"daemon.{name}" for name, value in fixed.items() if getattr(new.daemon, name) != value]
    daemon = msgspec.structs.replace(new.daemon, **fixed)
    merged = Settings(livekit=new.livekit, redis=old.redis, writer=old.writer, daemon=daemon, audio=new.audio,
                      dispatch=old.dispatch, webhooks=new.webhooks, retention=new.retention, consumer=new.consumer,
                      pipelines=new.pipelines)
    return merged, later
