"""The writer's batches and their round trip: queue and batch types, the append script, settling replies.

A batch is a run of one room's records with the same epoch, up to ``max_batch`` of them, sent as one call of the
append script (``append.lua``) with a token: the script assigns the room's next sequence numbers and adds the
entries atomically, and recognizes a batch re-sent after an unclear failure by its token (reply ``DUP``). One
round trip sends one batch per room plus the rooms' feed notifications. A reply that says Redis is unreachable or
refusing writes (memory full, read-only replica, busy script, failing persistence) settles nothing: the same
batches are sent again later. Any other refusal, and a fenced batch (an older epoch than the room's lease), goes to
the dead-letter stream.

:class:`BatchSender` is a part of :class:`eventstore.writer.EventWriter` (a mixin): it sends and settles batches
with the writer's client, keys, feed, dead letters and stats. The writer's public errors and stats are defined
here too and re-exported from :mod:`eventstore.writer`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ClusterDownError, NoScriptError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .codec import AppendArgs, frame_batch
from .deadletter import DeadLetters
from .feed import FeedNotifier
from .keys import Keys

log = logging.getLogger("eventstore")

_APPEND_LUA = resources.files("eventstore").joinpath("append.lua").read_text()
_APPEND_SHA = hashlib.sha1(_APPEND_LUA.encode()).hexdigest()
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)
# Refusals that describe the server's state, not the records (memory full, read-only replica, busy script,
# failing persistence): waited out like an outage, never sent to dead letters. MASTERDOWN is a ClusterDownError.
_REFUSED = (OutOfMemoryError, ReadOnlyError, TryAgainError, ClusterDownError)
_BUSY_CODES = ("BUSY ", "MISCONF ", "NOREPLICAS ")


def _refused(reply: object) -> bool:
    return isinstance(reply, _REFUSED) or (isinstance(reply, ResponseError) and str(reply).startswith(_BUSY_CODES))


class WriterClosed(RuntimeError):
    """``append`` was called after ``aclose``."""


class RecordsNotWritten(RuntimeError):
    """The writer closed with records it could neither write to Redis nor spool (no spool configured)."""


@dataclass
class WriterStats:
    appended: int = 0
    written: int = 0
    duplicates: int = 0
    fenced: int = 0
    spooled: int = 0
    batches: int = 0
    round_trips: int = 0  # pipelines sent to Redis
    errors: int = 0


@dataclass
class _Batch:
    room: str
    token: str
    epoch: int
    items: list[AppendArgs]
    enqueued: float = 0.0


@dataclass
class _RoomQueue:
    items: deque[tuple[AppendArgs, int, float]] = field(default_factory=deque)
    inflight: _Batch | None = None


# Called after a batch is in Redis: (room, count, first_seq, last_seq, seconds since the oldest was appended).
WrittenHook = Callable[[str, int, int, int, float], None]


class BatchSender:
    """The round trip of :class:`~eventstore.writer.EventWriter` (a mixin: the writer sets these attributes)."""

    _redis: aioredis.Redis
    keys: Keys
    stats: WriterStats
    _maxlen: int
    _feed: FeedNotifier
    _dead: DeadLetters
    _on_written: WrittenHook | None

    async def _send(self, batches: list[_Batch]) -> list[object]:
        pipe = self._redis.pipeline(transaction=False)
        for b in batches:
            pipe.evalsha(_APPEND_SHA, 4, self.keys.events(b.room), self.keys.meta(b.room),
                         self.keys.lease(b.room), self.keys.archived(b.room), b.epoch, -1, b.token, self._maxlen,
                         frame_batch(b.items))
        await self._feed.notify(pipe, [b.room for b in batches])
        replies = await pipe.execute(raise_on_error=False)
        self.stats.round_trips += 1
        self.stats.batches += len(batches)
        for r in replies:
            if isinstance(r, _UNREACHABLE) or _refused(r):
                raise r  # nothing is settled: the same batches (same tokens) are sent again later
        replies = replies[: len(batches)]
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            # First use, or Redis restarted (cheaper than SCRIPT EXISTS per round trip); they did not run.
            await self._redis.script_load(_APPEND_LUA)
            again = await self._send([batches[i] for i in missing])
            for i, r in zip(missing, again):
                replies[i] = r
        return replies

    def _settle(self, batch: _Batch, reply: object) -> None:
        if isinstance(reply, ResponseError) or not isinstance(reply, list):
            log.error("room %r: append refused (%s); %d records to dead letters", batch.room, reply,
                      len(batch.items))
            self._dead.later(batch.room, batch.items, f"append_error: {reply}")
            return
        status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if status in ("OK", "DUP"):
            first, last = int(reply[1]), int(reply[2])
            if status == "DUP":
                self.stats.duplicates += len(batch.items)
            else:
                self.stats.written += len(batch.items)
            if self._on_written is not None and batch.enqueued:
                self._on_written(batch.room, len(batch.items), first, last, time.monotonic() - batch.enqueued)
            return
        self.stats.fenced += len(batch.items)
        log.error("room %r: append %s (reply %r); %d records to dead letters", batch.room, status, reply,
                  len(batch.items))
        self._dead.later(batch.room, batch.items, f"{status.lower()}: epoch {batch.epoch}, reply {reply!r}")
