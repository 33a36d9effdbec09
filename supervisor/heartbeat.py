"""Daemon heartbeats: ``rs:daemon:<id>`` holds a JSON snapshot of one daemon and its rooms, with a TTL.

The daemon rewrites it every few seconds; when a daemon dies the key expires. ``room-supervisor rooms``
reads every heartbeat to show which daemon holds which room and in which state.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import redis.asyncio as aioredis

from eventstore.keys import Keys

log = logging.getLogger("supervisor")


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


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Heartbeat).decode


async def write_heartbeat(redis: aioredis.Redis, keys: Keys, beat: Heartbeat, ttl: float) -> None:
    await redis.set(keys.daemon(beat.id), _encode(beat), px=max(int(ttl * 1000), 1))


async def delete_heartbeat(redis: aioredis.Redis, keys: Keys, daemon_id: str, instance: str) -> None:
    """Remove this instance's heartbeat (not a successor's that reuses the id)."""
    raw = await redis.get(keys.daemon(daemon_id))
    beat = _safe(raw) if raw is not None else None
    if beat is not None and beat.instance == instance:
        await redis.delete(keys.daemon(daemon_id))


async def read_heartbeats(redis: aioredis.Redis, keys: Keys) -> list[Heartbeat]:
    """Every live daemon's heartbeat; unreadable ones are skipped with a warning."""
    names = [k async for k in redis.scan_iter(match=keys.daemon_pattern(), count=500)]
    if not names:
        return []
    beats = []
    for name, raw in zip(names, await redis.mget(names)):
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
