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
from typing import Any, Callable

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ClusterDownError, NoScriptError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import AskError, MovedError, RedisClusterException, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .codec import AppendArgs, frame_batch
from .connection import is_cluster
from .deadletter import DeadLetters
from .feed import FeedNotifier
from .keys import Keys

log = logging.getLogger("eventstore")

_APPEND_LUA = resources.files("eventstore").joinpath("append.lua").read_text()
_APPEND_SHA = hashlib.sha1(_APPEND_LUA.encode()).hexdigest()
# RedisClusterException: a cluster client that reaches no node (SlotNotCoveredError: none serves a slot, for now)
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError,
                RedisClusterException)
# Refusals that describe the server's state, not the records (memory full, read-only replica, busy script,
# failing persistence): waited out like an outage, never sent to dead letters. MASTERDOWN is a ClusterDownError.
_REFUSED = (OutOfMemoryError, ReadOnlyError, TryAgainError, ClusterDownError)
_BUSY_CODES = ("BUSY ", "MISCONF ", "NOREPLICAS ")
TOLD_ROOMS = 100_000  # rooms whose last written seq a writer remembers (to notice seqs given again)


def _refused(reply: object) -> bool:
    return isinstance(reply, _REFUSED) or (isinstance(reply, ResponseError) and str(reply).startswith(_BUSY_CODES))


class NotReplicated(ResponseError):
    """Fewer than ``wait_replicas`` replicas confirmed a round trip's appends in time: waited out like a refusal
    (the message starts with NOREPLICAS, as Redis' own refusal for ``min-replicas-to-write`` does)."""


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
    seq_reused: int = 0  # batches numbered at or below a seq this writer had been told was written (lost appends)
    unreplicated: int = 0  # round trips whose appends fewer than wait_replicas replicas confirmed in time


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
    _wait_replicas: int
    _wait_ms: int
    _wait_nodes: dict[str, Any]  # on a cluster: the masters this round trip's WAITs went to, by name
    _told: dict[str, int]  # room -> the last seq this writer was told was written (insertion order: oldest first)

    async def _send(self, batches: list[_Batch]) -> list[object]:
        pipe = self._redis.pipeline(transaction=False)
        for b in batches:
            # execute_command, not pipe.evalsha: redis-py's cluster pipeline refuses the latter, and routes this by
            # its keys (one room's keys share a slot)
            pipe.execute_command("EVALSHA", _APPEND_SHA, 4, self.keys.events(b.room), self.keys.meta(b.room),
                                 self.keys.lease(b.room), self.keys.archived(b.room), b.epoch, -1, b.token,
                                 self._maxlen, frame_batch(b.items))
        await self._feed.notify(pipe, [b.room for b in batches])
        waits = self._queue_waits(pipe, batches)
        generation = getattr(self._redis, "generation", 0)
        if waits and is_cluster(self._redis):
            # No resending of a moved command after the pipeline: it would run after its node's WAIT
            replies = await pipe.execute(raise_on_error=False, allow_redirections=False)
        else:
            replies = await pipe.execute(raise_on_error=False)
        if waits and getattr(self._redis, "generation", 0) != generation:
            # redis-py resent the pipeline after an error (having learned the cluster again): its WAITs went to
            # its default node, not to the masters of the appends
            raise NotReplicated("NOREPLICAS the cluster client started over during the round trip; sent again")
        self.stats.round_trips += 1
        self.stats.batches += len(batches)
        for r in replies:
            if isinstance(r, _UNREACHABLE) or _refused(r):
                raise r  # nothing is settled: the same batches (same tokens) are sent again later
        if waits:
            await self._check_replicated(batches, replies, waits)
        replies = replies[: len(batches)]
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            # First use, or Redis restarted (cheaper than SCRIPT EXISTS per round trip); they did not run.
            await self._redis.script_load(_APPEND_LUA)
            again = await self._send([batches[i] for i in missing])
            for i, r in zip(missing, again):
                replies[i] = r
        return replies

    def _queue_waits(self, pipe: Any, batches: list[_Batch]) -> int:
        """With ``wait_replicas``: a WAIT after the appends, on the connection that sent them (one per master of a
        cluster: its pipeline sends each node its commands in order on one connection). How many."""
        if not self._wait_replicas or not batches:
            return 0
        if not is_cluster(self._redis):
            pipe.execute_command("WAIT", self._wait_replicas, self._wait_ms)
            return 1
        self._wait_nodes = {}
        for b in batches:
            node = self._redis.get_node_from_key(self.keys.events(b.room))
            self._wait_nodes[node.name] = node
        for node in self._wait_nodes.values():
            pipe.execute_command("WAIT", self._wait_replicas, self._wait_ms, target_nodes=node)
        return len(self._wait_nodes)

    async def _check_replicated(self, batches: list[_Batch], replies: list[object], waits: int) -> None:
        """Every WAIT saw ``wait_replicas`` replicas take the appends; else :class:`NotReplicated` (nothing is
        settled: the batches go again with their tokens, which their rooms recognize, and are waited for again).
        On a cluster also: no append was redirected (MOVED, ASK, TRYAGAIN: sent again later, once the client has
        learned the new owner), and every room is still served by the node its WAIT went to."""
        acks = replies[-waits:]
        if is_cluster(self._redis):
            moved = [(b, r) for b, r in zip(batches, replies) if isinstance(r, (MovedError, AskError, TryAgainError))]
            if moved:
                await self._redis.exists(self.keys.events(moved[0][0].room))  # follows the move, learns the map
                raise NotReplicated(f"NOREPLICAS appends moved to another node ({moved[0][1]}); sent again")
            names = {self._redis.get_node_from_key(self.keys.events(b.room)).name for b in batches}
            if not names <= set(self._wait_nodes):
                raise NotReplicated("NOREPLICAS the cluster changed during the round trip; sent again")
        for ack in acks:
            if isinstance(ack, Exception):
                raise ack
            if int(ack) < self._wait_replicas:  # type: ignore[call-overload]
                self.stats.unreplicated += 1
                raise NotReplicated(f"NOREPLICAS {ack} of {self._wait_replicas} replicas took the appends within "
                                    f"{self._wait_ms} ms")

    def _check_not_reused(self, batch: _Batch, first: int, last: int) -> None:
        """Seqs are never handed out twice, unless Redis lost acknowledged appends (a master failover before its
        replica had them, with ``wait_replicas`` 0; a restart without persistence) and then numbered new records
        from where it was. This writer remembers the last seq it was told per room (a bounded number of rooms):
        new records at or below it are recorded in ``rs:dead`` (reason ``seq_reused``) besides being written."""
        told = self._told.pop(batch.room, 0)
        self._told[batch.room] = max(told, last)
        if len(self._told) > TOLD_ROOMS:
            del self._told[next(iter(self._told))]
        if first <= told:
            self.stats.seq_reused += 1
            log.error("room %r: seqs %d..%d given again (this writer was told seq %d was written before): Redis "
                      "lost acknowledged appends; recorded in dead letters", batch.room, first, last, told)
            self._dead.later(batch.room, batch.items, f"seq_reused: seqs {first}..{last} were given before (up to "
                             f"{told}); the records told before were lost by Redis")

    def _settle(self, batch: _Batch, reply: object) -> None:
        if isinstance(reply, ResponseError) or not isinstance(reply, list):
            log.error("room %r: append refused (%s); %d records to dead letters", batch.room, reply,
                      len(batch.items))
            self._dead.later(batch.room, batch.items, f"append_error: {reply}")
            return
        status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if status in ("OK", "DUP"):
            first, last = int(reply[1]), int(reply[2])
            if status == "OK":
                self._check_not_reused(batch, first, last)
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
