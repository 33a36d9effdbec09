"""The settings' types: one msgspec Struct per section of the TOML file, and :class:`Settings`, all of them.

Loading, precedence and checks are in :mod:`supervisor.settings`, which re-exports everything here.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .redaction import redact_url


class SettingsError(ValueError):
    """The configuration is invalid; the message says which setting, where it came from, and why."""

    def __init__(self, message: str, setting: str = "") -> None:
        super().__init__(message)
        self.setting = setting  # "section.field" when the message is about one setting


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
    # an append counts as written only once this many replicas have it (WAIT after each round trip, at most
    # wait_timeout s; else the writer keeps the records and tries again, as in an outage). 0: when the master has it
    wait_replicas: int = 0
    wait_timeout: float = 1.0


class WriterSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    max_batch: int = 256
    max_pending: int = 10_000
    max_block: float = 0.5  # longest an append may wait for room in the queue before spilling to the spool
    spool_dir: str = "/var/lib/room-supervisor/spool"
    spool_max_bytes: int = 1 << 30
    spool_fsync: bool = False


class DaemonSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: str = ""  # empty: the host name (stable across restarts: a restarted daemon takes its rooms back at once)
    max_rooms: int = 200
    default_pipeline: str = "listen"
    drain_timeout: float = 25.0  # keep below systemd's TimeoutStopSec
    lease_ttl: float = 10.0
    outage_grace: float = 120.0  # s without Redis after which a room with another bot of ours is given up
    reconcile_interval: float = 1.0
    rejoin_base: float = 0.5
    rejoin_max: float = 30.0
    restart_budget: int = 5  # pipeline crashes per room within restart_window before the room is failed
    restart_window: float = 300.0
    http_host: str = "127.0.0.1"
    http_port: int = 9108  # 0 disables the HTTP endpoint
    watchdog_interval: float = 0.0  # 0: from $WATCHDOG_USEC
    log_level: str = "INFO"
    max_stream_bytes: int = 1 << 20  # content kept of one LiveKit text or byte stream; the rest is counted
    # a new room is taken only while the daemon's load (event-loop CPU and lag, 0..1) is below this; rooms it
    # declines stay desired for other daemons. 1.0 or more: admission by load is off, only max_rooms limits
    load_threshold: float = 0.7


class AudioSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    in_sample_rate: int = 16000  # the pipeline's input audio (the rtc SDK resamples natively)
    out_sample_rate: int = 24000  # the bot's published audio
    frame_ms: int = 20  # input frame length: 10 ms frames cost about twice the CPU of 20 ms ones


class DispatchSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # register with the LiveKit server as an agent worker and take the rooms it dispatches (restart to change)
    enabled: bool = False
    agent_name: str = ""  # empty: automatic dispatch, a job for every new room; else explicit dispatch by this name
    pipeline: str = ""  # the pipeline of dispatched rooms; empty: daemon.default_pipeline
    # LiveKit's agents.target_load (livekit.yaml): the load the daemon reports reaches it when the daemon is full
    target_load: float = 0.7


class WebhookSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # record LiveKit's webhooks (POST to the daemon's HTTP endpoint) in the rooms' streams
    enabled: bool = False
    path: str = "/livekit/webhook"
    api_key: str = ""  # the key LiveKit signs webhooks with (its webhook.api_key); empty: livekit.api_key
    api_secret: str = ""  # its secret; empty: livekit.api_secret
    rooms: str = "supervised"  # "supervised": rooms desired or with a stream already; "all": every room


class RetentionSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # where ended rooms are archived (one directory per room, gzip JSON Lines segments); empty: no archive
    archive_dir: str = ""
    archive_after: float = 3600.0  # s since a room's last record before an ended room is archived
    projections: list[str] = msgspec.field(default_factory=lambda: ["participants", "call-state"])
    interval: float = 60.0  # s between passes of `archive --follow`
    lock_ttl: float = 60.0  # s a killed archiver's hold on a room lasts (extended while a room is read)
    # rooms that live on keep this many records in Redis; older ones every projection has folded are archived and
    # trimmed from the stream (0: never trimmed)
    keep_records: int = 0
    # s an archived room's tombstone (its last seq) stays in Redis; a room written again after that takes its last
    # seq from the archive (the daemon must be able to read archive_dir). 0: tombstones stay until written again
    tombstone_ttl: float = 86400.0


class ConsumerSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    lease_ms: int = 10_000
    block_ms: int = 1000
    chunk: int = 1000


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    livekit: LiveKitSettings = msgspec.field(default_factory=LiveKitSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    writer: WriterSettings = msgspec.field(default_factory=WriterSettings)
    daemon: DaemonSettings = msgspec.field(default_factory=DaemonSettings)
    audio: AudioSettings = msgspec.field(default_factory=AudioSettings)
    dispatch: DispatchSettings = msgspec.field(default_factory=DispatchSettings)
    webhooks: WebhookSettings = msgspec.field(default_factory=WebhookSettings)
    retention: RetentionSettings = msgspec.field(default_factory=RetentionSettings)
    consumer: ConsumerSettings = msgspec.field(default_factory=ConsumerSettings)
    # name -> "module:function": the pipelines `join --pipeline NAME` may name, besides the built-ins and the
    # entry points in the group room_supervisor.pipelines (these names win over entry points)
    pipelines: dict[str, str] = msgspec.field(default_factory=dict)

    def redacted(self) -> dict[str, Any]:
        data = msgspec.to_builtins(self)
        data["livekit"]["api_secret"] = "***" if self.livekit.api_secret else ""
        data["webhooks"]["api_secret"] = "***" if self.webhooks.api_secret else ""
        data["redis"]["url"] = redact_url(self.redis.url)
        return data

    def __repr__(self) -> str:
        return f"Settings({self.redacted()!r})"


SECTIONS: dict[str, type[msgspec.Struct]] = {
    "livekit": LiveKitSettings,
    "redis": RedisSettings,
    "writer": WriterSettings,
    "daemon": DaemonSettings,
    "audio": AudioSettings,
    "dispatch": DispatchSettings,
    "webhooks": WebhookSettings,
    "retention": RetentionSettings,
    "consumer": ConsumerSettings,
}
# Sections that are a free table of name -> value rather than fixed fields.
TABLES = ("pipelines",)
