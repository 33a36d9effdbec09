"""EventWriter: queue records per room and append them to Redis in pipelined batches, in order, exactly once.

``append(record)`` encodes the record and returns at once: it waits for room in memory at most ``max_block``
seconds, and while records go to the spool it waits for the spool's write (done in the spool's thread, one write
for every append waiting at that moment). A flusher task sends, per round trip, one batch per room with pending
records: each batch is one call of the append script (``append.lua``), which assigns the room's next sequence
numbers and adds the entries atomically, plus a notification on the room's feed partition. Batches carry a
token: a batch re-sent after an unclear failure is recognized and not written twice.

When Redis is unreachable, records wait in memory up to ``max_pending``; past that (or on close) they go to
the spool file, which is replayed in order when Redis answers again. Everything in memory is older than
everything in the spool, so the flusher drains memory first; the spool pump keeps that so (see
:mod:`eventstore.spool_pump`). The spool is replayed a window at a time (see ``eventstore.spool``): one batch
per room per round trip, each batch many spooled records.

This module holds the class: its public API, its memory queues and the flusher. Its other parts are
:mod:`eventstore.spool_pump` (the hand-off to the spool) and :mod:`eventstore.batches` (the queue and batch
types, the round trip and settling its replies; also :class:`WriterStats` and the errors, re-exported here).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from .batches import _APPEND_LUA  # noqa: F401 - re-exported: tests load the append script themselves
from .batches import (
    _UNREACHABLE, BatchSender, RecordsNotWritten, WriterClosed, WriterStats, WrittenHook, _Batch, _refused, _RoomQueue,
)
from .codec import AppendArgs, encode_for_append
from .deadletter import DeadLetters
from .feed import FeedNotifier
from .keys import Keys
from .records import Record
from .spool import Spool, SpoolError
from .spool_pump import SpoolPump, _ToSpool

__all__ = ["EventWriter", "RecordsNotWritten", "WriterClosed", "WriterStats", "WrittenHook"]

log = logging.getLogger("eventstore")

# ``append`` yields at every this many pending records: lets the flusher send while a tight producer loop goes on.
_YIELD_EVERY = 1024


class EventWriter(SpoolPump, BatchSender):
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        keys: Keys | None = None,
        producer: str | None = None,
        spool: Spool | None = None,
        max_batch: int = 256,
        max_pending: int = 10_000,
        max_block: float = 0.5,
        stream_maxlen: int = 0,
        on_written: WrittenHook | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        self._redis = redis
        self.keys = keys or Keys()
        self.producer = producer or uuid.uuid4().hex[:12]
        self._spool = spool
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.max_block = max_block
        self._maxlen = stream_maxlen
        self._on_written = on_written
        # an append counts as written only once this many replicas have it (WAIT after each round trip)
        self._wait_replicas = wait_replicas
        self._wait_ms = max(1, int(wait_timeout * 1000))
        self._told: dict[str, int] = {}
        self._wait_nodes: dict[str, Any] = {}
        self.wait = (wait_replicas, wait_timeout)  # for writers that stand in for this one (spools of gone daemons)
        self._feed = FeedNotifier(redis, self.keys)
        self._dead = DeadLetters(redis, self.keys)
        self._rooms: dict[str, _RoomQueue] = {}
        self._pending = 0
        self._token_seq = 0
        # Batch tokens must never repeat, even for two writers given the same producer name.
        self._token_base = f"{self.producer}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._space = asyncio.Event()
        self._space.set()
        self._task: asyncio.Task[None] | None = None
        self._inbox: list[_ToSpool] = []
        self._pump: asyncio.Task[None] | None = None
        self._closing = False
        self._closed_event = asyncio.Event()  # cuts a retry backoff short; new appends do not
        self._close_future: asyncio.Future[None] | None = None
        self._closed = False
        self.redis_ok = True
        self.stats = WriterStats()

    # --- public API ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the flusher. Records left in the spool by an earlier run are sent first."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"EventWriter[{self.producer}]")
            if self._spool is not None and not self._spool.empty:
                log.info("spool %s holds %d bytes from an earlier run; replaying", self._spool.path,
                         self._spool.pending_bytes)
                self._kick()

    async def append(self, record: Record) -> None:
        """Queue one record. Returns at once unless the queue is full, then waits at most ``max_block``; while
        records go to the spool it waits for the spool's write. Raises :class:`RecordsNotWritten` (queue full,
        no spool) or :class:`SpoolError` (queue full and the spool cannot take it)."""
        if self._closing:
            raise WriterClosed("EventWriter is closed")
        args = encode_for_append(record)
        self.stats.appended += 1
        if not self._spool_mode() and self._pending >= self.max_pending:
            await self._wait_for_space()
        if self._spool_mode() or self._pending >= self.max_pending:
            if self._spool is None:
                # No spool: the caller's bound is honoured by raising instead of silently dropping.
                raise RecordsNotWritten(f"writer queue full ({self._pending}) and no spool configured")
            await self._to_spool(_ToSpool((record.room, record.epoch, args, time.monotonic())))
            return
        self._queue(record.room, args, record.epoch, time.monotonic())
        self._kick()
        if self._pending % _YIELD_EVERY == 0:
            await asyncio.sleep(0)

    async def _wait_for_space(self) -> None:
        # Several producers may wait here: one woken by free space can find it taken again by another, so wait
        # again until space stays free, the spool takes over, or ``max_block`` is used up.
        deadline = time.monotonic() + self.max_block
        while self._pending >= self.max_pending and not self._spool_mode():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._space.clear()
            try:
                await asyncio.wait_for(self._space.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _queue(self, room: str, args: AppendArgs, epoch: int, enqueued: float) -> None:
        queue = self._rooms.get(room)
        if queue is None:
            queue = self._rooms[room] = _RoomQueue()
        queue.items.append((args, epoch, enqueued))
        self._pending += 1

    @property
    def pending(self) -> int:
        """Records not yet confirmed in Redis (memory only; see ``spooled_bytes`` for the spool)."""
        return self._pending

    @property
    def spooled_bytes(self) -> int:
        return self._spool.pending_bytes if self._spool is not None else 0

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything appended so far is in Redis. False if ``timeout`` passed first."""
        if self._task is None:
            await self.start()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def aclose(self, timeout: float = 5.0) -> None:
        """Flush for at most ``timeout`` seconds, spool what is left, stop. Safe to call twice, also
        concurrently: later calls wait for the first one (and see its error, if any)."""
        if self._close_future is None:
            self._close_future = asyncio.ensure_future(self._close(timeout))
        await asyncio.shield(self._close_future)

    async def _close(self, timeout: float) -> None:
        self._closing = True
        self._closed_event.set()
        self._kick()
        try:
            if self._task is not None:
                # Wait until flushed, or until the flusher gives up (it stops at the first failure once closing).
                idle = asyncio.ensure_future(self._idle.wait())
                await asyncio.wait({idle, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                idle.cancel()
                await asyncio.gather(idle, return_exceptions=True)
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1.0)
            await self._pump_done()  # appends already handed to the pump are decided first
            if self._pending:
                await self._spill_at_close()
        finally:
            self._closed = True
            await self._pump_done()
            if self._spool is not None:
                await self._spool.aclose()

    # --- internals ----------------------------------------------------------------------------------------

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    def _next_token(self) -> str:
        self._token_seq += 1
        return f"{self._token_base}:{self._token_seq}"

    def _has_work(self) -> bool:
        return self._pending > 0 or self._spool_holds_data()

    def _take_batch(self, room: str, queue: _RoomQueue) -> _Batch:
        first_args, epoch, enqueued = queue.items.popleft()
        items = [first_args]
        while queue.items and len(items) < self.max_batch and queue.items[0][1] == epoch:
            items.append(queue.items.popleft()[0])
        return _Batch(room, self._next_token(), epoch, items, enqueued)

    # --- the flusher --------------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._has_work():
                try:
                    if self._pending:
                        await self._flush_memory()
                    else:
                        await self._replay_spool()
                    if not self.redis_ok:
                        log.info("Redis reachable again; writer resumes")
                    self.redis_ok = True
                    backoff = 0.05
                except Exception as exc:  # noqa: BLE001 - the flusher must outlive any failure, or records stall
                    await self._failed(exc)
                    if self._closing:
                        return
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
            self._idle.set()
            if self._closing:
                return  # closed and idle (a cancellation lost inside redis-py must not keep us running)

    async def _failed(self, exc: Exception) -> None:
        if isinstance(exc, _UNREACHABLE) or _refused(exc):
            if self.redis_ok:
                log.warning("Redis unreachable or refusing writes (%s); %d records wait", exc, self._pending)
        else:
            log.exception("writer: flush failed; %d records wait", self._pending)
        self.redis_ok = False
        self.stats.errors += 1
        if self._closing or self._spool is None or self._pending < self.max_pending:
            return
        try:
            await self._to_spool(_ToSpool(None))  # the pump spills memory if it is still full
        except SpoolError as spool_exc:
            log.error("writer %s: cannot spool (%s); %d records stay in memory", self.producer, spool_exc,
                      self._pending)

    async def _sleep(self, seconds: float) -> None:
        """The retry backoff while Redis is down: appends keep queueing (and wake the flusher's event), but
        only closing ends the wait early, so an outage is probed at the backoff's pace, not per append."""
        try:
            await asyncio.wait_for(self._closed_event.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    async def _flush_memory(self) -> None:
        batches = []
        for room, queue in self._rooms.items():
            if queue.inflight is None:
                if not queue.items:
                    continue
                queue.inflight = self._take_batch(room, queue)
            batches.append(queue.inflight)
        replies = await self._send(batches)
        for batch, reply in zip(batches, replies):
            queue = self._rooms.get(batch.room)
            if queue is None or queue.inflight is not batch:
                continue  # spilled to the spool while in flight; its token makes the replay a no-op
            queue.inflight = None
            self._pending -= len(batch.items)
            self._settle(batch, reply)
            if not queue.items:
                del self._rooms[batch.room]
        await self._dead.flush()
        if self._pending < self.max_pending:
            self._space.set()

    async def _replay_spool(self) -> None:
        """Send the spool's next window (one round trip; the same window again after a failure)."""
        assert self._spool is not None
        window = await self._spool.next_window(self.max_batch)
        if window is None or self._pending:
            return  # nothing yet (a write is under way), or memory holds older records: they go first
        if window.batches:
            batches = [_Batch(u.room, u.token, u.epoch, list(u.items)) for u in window.batches]
            replies = await self._send(batches)
            for batch, reply in zip(batches, replies):
                self._settle(batch, reply)
            await self._dead.flush()
        await self._spool.consumed(window)
