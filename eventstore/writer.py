"""EventWriter: queue records per room and append them to Redis in pipelined batches, in order, exactly once.

``append(record)`` encodes the record and returns at once (it waits only for back-pressure, never longer than
``max_block`` seconds). A flusher task sends, per round trip, one batch per room with pending records: each
batch is one call of the append script (``append.lua``), which assigns the room's next sequence numbers and
adds the entries atomically, plus a notification on the room's feed partition. Batches carry a token: a batch
re-sent after an unclear failure is recognized and not written twice.

When Redis is unreachable, records wait in memory up to ``max_pending``; past that (or on close) they go to
the spool file, which is replayed in order when Redis answers again. Invariant: everything in memory is older
than everything in the spool, so the flusher drains memory first and new records go to the spool while it
holds anything.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ClusterDownError, NoScriptError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .codec import AppendArgs, encode_for_append, frame_batch
from .deadletter import DeadLetters
from .feed import FeedNotifier
from .keys import Keys
from .records import Record
from .spool import Spool, SpoolError, SpoolUnit

log = logging.getLogger("eventstore")

_APPEND_LUA = resources.files("eventstore").joinpath("append.lua").read_text()
_APPEND_SHA = hashlib.sha1(_APPEND_LUA.encode()).hexdigest()
# ``append`` yields at every this many pending records: lets the flusher send while a tight producer loop goes on.
_YIELD_EVERY = 1024
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


class EventWriter:
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
        """Queue one record. Returns at once unless the queue is full, then waits at most ``max_block``."""
        if self._closing:
            raise WriterClosed("EventWriter is closed")
        args = encode_for_append(record)
        self.stats.appended += 1
        if self._spool_holds_data():
            self._to_spool(SpoolUnit(record.room, self._next_token(), record.epoch, [args]))
            self._kick()
            return
        if self._pending >= self.max_pending:
            # Several producers may wait here: one woken by free space can find it taken again by another,
            # so wait again until space stays free or ``max_block`` is used up.
            deadline = time.monotonic() + self.max_block
            while self._pending >= self.max_pending and not self._spool_holds_data():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._space.clear()
                try:
                    await asyncio.wait_for(self._space.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            if self._pending >= self.max_pending or self._spool_holds_data():
                if self._spool is None:
                    # No spool: the caller's bound is honoured by raising instead of silently dropping.
                    raise RecordsNotWritten(f"writer queue full ({self._pending}) and no spool configured")
                self._spill_memory()
                self._to_spool(SpoolUnit(record.room, self._next_token(), record.epoch, [args]))
                self._kick()
                return
        queue = self._rooms.get(record.room)
        if queue is None:
            queue = self._rooms[record.room] = _RoomQueue()
        queue.items.append((args, record.epoch, time.monotonic()))
        self._pending += 1
        self._kick()
        if self._pending % _YIELD_EVERY == 0:
            await asyncio.sleep(0)

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
            if self._pending:
                if self._spool is None:
                    raise RecordsNotWritten(f"{self._pending} records not written and no spool configured")
                log.warning("writer %s closing with Redis unreachable: %d records go to spool %s",
                            self.producer, self._pending, self._spool.path)
                try:
                    self._spill_memory()
                except SpoolError as exc:
                    raise RecordsNotWritten(f"{self._pending} records not written: {exc}") from exc
        finally:
            self._closed = True
            if self._spool is not None:
                self._spool.close()

    # --- internals ----------------------------------------------------------------------------------------

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    def _next_token(self) -> str:
        self._token_seq += 1
        return f"{self._token_base}:{self._token_seq}"

    def _spool_holds_data(self) -> bool:
        return self._spool is not None and not self._spool.empty

    def _has_work(self) -> bool:
        return self._pending > 0 or self._spool_holds_data()

    def _to_spool(self, unit: SpoolUnit) -> None:
        assert self._spool is not None
        self._spool.append(unit)
        self.stats.spooled += len(unit.items)

    def _spill_memory(self) -> None:
        """Move every queued record to the spool, per room in order, in-flight batches first with their
        tokens (a batch whose send is still under way is then skipped by the flusher when its reply comes;
        if Redis did write it, the replay is recognized as a retry). On :class:`SpoolError` nothing taken
        from memory is lost: the batch being spooled goes back to the front of its queue."""
        if self._spool is None or not self._pending:
            return
        for room in list(self._rooms):
            queue = self._rooms[room]
            if queue.inflight is not None:
                b = queue.inflight
                self._to_spool(SpoolUnit(room, b.token, b.epoch, b.items))
                self._pending -= len(b.items)
                queue.inflight = None
            while queue.items:
                batch = self._take_batch(room, queue)
                try:
                    self._to_spool(SpoolUnit(room, batch.token, batch.epoch, batch.items))
                except SpoolError:
                    queue.items.extendleft((args, batch.epoch, batch.enqueued) for args in reversed(batch.items))
                    raise
                self._pending -= len(batch.items)
            del self._rooms[room]
        self._space.set()

    def _take_batch(self, room: str, queue: _RoomQueue) -> _Batch:
        first_args, epoch, enqueued = queue.items.popleft()
        items = [first_args]
        while queue.items and len(items) < self.max_batch and queue.items[0][1] == epoch:
            items.append(queue.items.popleft()[0])
        return _Batch(room, self._next_token(), epoch, items, enqueued)

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
                    if isinstance(exc, _UNREACHABLE) or _refused(exc):
                        if self.redis_ok:
                            log.warning("Redis unreachable or refusing writes (%s); %d records wait", exc,
                                        self._pending)
                    else:
                        log.exception("writer: flush failed; %d records wait", self._pending)
                    self.redis_ok = False
                    self.stats.errors += 1
                    if self._closing:
                        return
                    if self._pending >= self.max_pending:
                        try:
                            self._spill_memory()
                        except SpoolError as spool_exc:
                            log.error("writer %s: cannot spool (%s); %d records stay in memory", self.producer,
                                      spool_exc, self._pending)
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
            self._idle.set()
            if self._closing:
                return  # closed and idle (a cancellation lost inside redis-py must not keep us running)

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
        assert self._spool is not None
        read = self._spool.read(max_units=256)
        if not read:
            return
        batches = [_Batch(u.room, u.token, u.epoch, list(u.items)) for u, _ in read]
        replies = await self._send(batches)
        for batch, reply in zip(batches, replies):
            self._settle(batch, reply)
        await self._dead.flush()
        self._spool.consumed(read[-1][1])

    async def _send(self, batches: list[_Batch]) -> list[object]:
        pipe = self._redis.pipeline(transaction=False)
        for b in batches:
            pipe.evalsha(_APPEND_SHA, 3, self.keys.events(b.room), self.keys.meta(b.room),
                         self.keys.lease(b.room), b.epoch, -1, b.token, self._maxlen, frame_batch(b.items))
        await self._feed.notify(pipe, [b.room for b in batches])
        replies = await pipe.execute(raise_on_error=False)
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
