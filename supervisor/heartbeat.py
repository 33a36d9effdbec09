"""Daemon heartbeats: ``rs:daemon:<id>`` holds a JSON snapshot of one daemon and its rooms, with a TTL.

The daemon rewrites it every few seconds; when a daemon dies the key expires. ``room-supervisor rooms``
reads every heartbeat to show which daemon holds which room and in which state. Two daemons with one id (which
would take each other's rooms, see :mod:`supervisor.daemon.leases`) are caught here: at start a daemon waits while a
heartbeat under its id belongs to a process that is alive (on another host, or another pid on this one), and
a running daemon that finds another instance's heartbeat under its id logs it as an error.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import msgspec
import redis.asyncio as aioredis

from eventstore.keys import Keys

log = logging.getLogger("supervisor")

INDEX_GRACE_MS = 60_000  # an index entry outlives its heartbeat this long (clocks of hosts may differ a little)


class Heartbeat(msgspec.Struct, kw_only=True):
    id: str
    instance: str
    host: str
    pid: int
    state: str  # starting | ready | draining
    started: float
    updated: float
    redis_ok: bool = True
    livekit_ok: bool = True
    max_rooms: int = 0
    rooms: dict[str, dict[str, Any]] = {}
    # load over the last 10 s (supervisor.daemon.load): 0..1, new rooms taken only below load_threshold
    load: float = 0.0
    load_threshold: float = 0.0
    cpu: float = 0.0  # share of one core used by the event-loop thread
    loop_lag_p50: float = 0.0  # seconds
    loop_lag_p99: float = 0.0
    declined: int = 0  # due rooms left to other daemons because of load, since start


def load_fields(load: Any, threshold: float, declined: int) -> dict[str, Any]:
    """The heartbeat's load fields from a :class:`supervisor.daemon.load.Load` (rounded: a snapshot for people)."""
    return {"load": round(load.load, 3), "load_threshold": threshold, "cpu": round(load.cpu, 3),
            "loop_lag_p50": round(load.lag_p50, 4), "loop_lag_p99": round(load.lag_p99, 4), "declined": declined}


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Heartbeat).decode


async def write_heartbeat(redis: aioredis.Redis, keys: Keys, beat: Heartbeat, ttl: float) -> Heartbeat | None:
    """Write ``beat``; returns the heartbeat it replaced when that was another instance's (a daemon with the
    same id that is alive: two daemons share an id), else None."""
    ttl_ms = max(int(ttl * 1000), 1)
    pipe = redis.pipeline(transaction=False)  # two slots on a cluster: two commands, one round trip
    pipe.set(keys.daemon(beat.id), _encode(beat), px=ttl_ms, get=True)
    pipe.zadd(keys.daemons(), {beat.id.encode("utf-8", "surrogateescape"): int(time.time() * 1000) + ttl_ms})
    raw, _ = await pipe.execute()
    other = _safe(raw) if raw is not None else None
    return other if other is not None and other.instance != beat.instance else None


def twin(other: Heartbeat | None, host: str, pid: int) -> str:
    """Why ``other`` (the heartbeat found under this daemon's id at start) belongs to a daemon that is still
    running, or ``""`` when it is an earlier run of this one that is gone (same host, process not alive)."""
    if other is None:
        return ""
    if other.host != host:
        return (f"another daemon with id {other.id!r} runs on host {other.host!r} (pid {other.pid}); waiting until "
                "its heartbeat expires. Give each daemon its own daemon.id")
    if other.pid == pid or not _alive(other.pid):
        return ""
    return (f"another daemon with id {other.id!r} runs on this host (pid {other.pid}); waiting until it stops. "
            "Give each daemon its own daemon.id")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def read_heartbeat(redis: aioredis.Redis, keys: Keys, daemon_id: str) -> Heartbeat | None:
    raw = await redis.get(keys.daemon(daemon_id))
    return _safe(raw) if raw is not None else None


async def delete_heartbeat(redis: aioredis.Redis, keys: Keys, daemon_id: str, instance: str) -> None:
    """Remove this instance's heartbeat (not a successor's that reuses the id)."""
    raw = await redis.get(keys.daemon(daemon_id))
    beat = _safe(raw) if raw is not None else None
    if beat is not None and beat.instance == instance:
        await redis.delete(keys.daemon(daemon_id))


async def read_heartbeats(redis: aioredis.Redis, keys: Keys) -> list[Heartbeat]:
    """Every live daemon's heartbeat (those in the index ``rs:daemons``, which each heartbeat renews); unreadable
    ones are skipped with a warning, and index entries of daemons gone for a minute are removed."""
    now_ms = int(time.time() * 1000)
    pipe = redis.pipeline(transaction=False)
    pipe.zremrangebyscore(keys.daemons(), "-inf", now_ms - INDEX_GRACE_MS)  # daemons gone for good
    pipe.zrange(keys.daemons(), 0, -1)
    _, ids = await pipe.execute()
    if not ids:
        return []
    names = [keys.daemon(i.decode("utf-8", "surrogateescape")) for i in ids]
    pipe = redis.pipeline(transaction=False)  # not MGET: on a cluster the heartbeats live on several slots
    for name in names:
        pipe.get(name)
    beats = []
    for name, raw in zip(names, await pipe.execute()):
        beat = _safe(raw) if raw is not None else None
        if beat is None and raw is not None:
            log.warning("heartbeat %r is not readable; skipped", name)
        elif beat is not None:
            beats.append(beat)
    return sorted(beats, key=lambda b: b.id)


def _safe(raw: bytes) -> Heartbeat | None:
    try:
        return _decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
