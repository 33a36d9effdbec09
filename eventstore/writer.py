"""EventWriter: queue records per room and append them to Redis in pipelined batches, in order, exactly once.

``append(record)`` encodes the record and returns at once: it waits for room in memory at most ``max_block``
seconds, and while records go to the spool it waits for the spool's write (done in the spool's thread, one write
for every append waiting at that moment). A flusher task sends, per round trip, one batch per room with pending records: each
batch is one call of the append script (``append.lua``), which assigns the room's next sequence numbers and
adds the entries atomically, plus a notification on the room's feed partition. Batches carry a token: a batch
re-sent after an unclear failure is recognized and not written twice.

When Redis is unreachable, records wait in memory up to ``max_pending``; past that (or on close) they go to
the spool file, which is replayed in order when Redis answers again. Invariant: everything in memory is older
than everything in the spool, so the flusher drains memory first. It holds because one task, the spool pump,
makes every decision that involves the spool, in the order the records came: a record goes to memory only
while the spool is empty and the pump idle; a spill moves *all* of memory to the spool in one all-or-nothing
write (a failed spill leaves memory and spool as they were, so a room is never split between them); and while
the spool holds anything, new records follow it there. The spool is replayed a window at a time (see
``eventstore.spool``): one batch per room per round trip, each batch many spooled records.
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


@dataclass
class _ToSpool:
    """A request to the spool pump: one record (room, epoch, args, when appended), or none (spill memory if it
    is full); ``force``: spill whatever memory holds (at close)."""

    item: tuple[str, int, AppendArgs, float] | None
    force: bool = False
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


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

    async def _spill_at_close(self) -> None:
        if self._spool is None:
            raise RecordsNotWritten(f"{self._pending} records not written and no spool configured")
        log.warning("writer %s closing with Redis unreachable: %d records go to spool %s",
                    self.producer, self._pending, self._spool.path)
        try:
            await self._to_spool(_ToSpool(None, force=True))
        except SpoolError as exc:
            raise RecordsNotWritten(f"{self._pending} records not written: {exc}") from exc
        if self._pending:  # cannot happen while the invariant holds: older records never follow newer ones
            raise RecordsNotWritten(f"{self._pending} records not written: the spool holds newer ones")

    # --- internals ----------------------------------------------------------------------------------------

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    def _next_token(self) -> str:
        self._token_seq += 1
        return f"{self._token_base}:{self._token_seq}"

    def _spool_holds_data(self) -> bool:
        return self._spool is not None and not self._spool.empty

    def _spool_mode(self) -> bool:
        """Records must go through the spool pump: the spool holds data, or the pump is deciding or writing."""
        return self._spool is not None and (self._pump is not None or not self._spool.empty)

    def _has_work(self) -> bool:
        return self._pending > 0 or self._spool_holds_data()

    # --- the spool pump: the one place that moves records into the spool -------------------------------------

    async def _to_spool(self, request: _ToSpool) -> None:
        """Hand ``request`` to the pump and wait for its outcome; the pump completes it even if this caller is
        cancelled, so memory and spool stay consistent."""
        request.done.add_done_callback(_retrieve)
        self._inbox.append(request)
        if self._pump is None:
            self._pump = asyncio.create_task(self._run_pump(), name=f"EventWriter[{self.producer}].spool")
        await asyncio.shield(request.done)

    async def _pump_done(self) -> None:
        if self._pump is not None:
            await asyncio.gather(asyncio.shield(self._pump), return_exceptions=True)

    async def _run_pump(self) -> None:
        requests: list[_ToSpool] = []
        try:
            while self._inbox:
                requests, self._inbox = self._inbox, []
                try:
                    await self._commit(requests)
                except Exception as exc:  # noqa: BLE001 - SpoolError, or a bug: every waiter hears of it
                    _settle_all(requests, exc)
                else:
                    _settle_all(requests, None)
        finally:
            self._pump = None
            _settle_all(requests + self._inbox, SpoolError("the writer's spool pump stopped"))
            self._inbox = []

    async def _commit(self, requests: list[_ToSpool]) -> None:
        """Decide, in order, where ``requests``' records go: memory if the spool is empty and memory has room,
        else the spool (after all of memory, in the same write, if the spool was empty)."""
        assert self._spool is not None
        items = [r.item for r in requests if r.item is not None]
        if self._spool.empty:
            fits = self._pending < self.max_pending and self._pending + len(items) <= self.max_pending
            if fits and not any(r.force for r in requests):
                for room, epoch, args, enqueued in items:
                    self._queue(room, args, epoch, enqueued)
                if items:
                    self._kick()
                return
            await self._spill(self._new_units(items))
        elif items:
            # Memory (if anything) is older than what the spool holds and is flushed first; these follow.
            await self._spool.append(*self._new_units(items))
            self.stats.spooled += len(items)
            self._kick()

    async def _spill(self, newer: list[SpoolUnit]) -> None:
        """Move all of memory to the spool, followed by ``newer``, in one write: all or nothing. In-flight
        batches go first, with their tokens, marked ``sent`` (replayed alone, so a batch Redis did write is
        recognized as a retry); the flusher skips their replies. On :class:`SpoolError` memory is as it was."""
        assert self._spool is not None
        taken, count = self._rooms, self._pending
        units = self._memory_units(taken) + newer
        if not units:
            return
        self._rooms, self._pending = {}, 0
        try:
            await self._spool.append(*units)
        except SpoolError:
            # Nothing entered memory meanwhile (appends wait for the pump), so it goes back as it was.
            self._rooms, self._pending = taken, count
            raise
        self.stats.spooled += count + sum(len(u.items) for u in newer)
        self._space.set()
        self._kick()

    def _memory_units(self, rooms: dict[str, _RoomQueue]) -> list[SpoolUnit]:
        units = []
        for room, queue in rooms.items():
            if queue.inflight is not None:
                b = queue.inflight
                units.append(SpoolUnit(room, b.token, b.epoch, b.items, sent=True))
            units += self._units(room, [(epoch, args) for args, epoch, _ in queue.items])
        return units

    def _new_units(self, items: list[tuple[str, int, AppendArgs, float]]) -> list[SpoolUnit]:
        per_room: dict[str, list[tuple[int, AppendArgs]]] = {}
        for room, epoch, args, _ in items:
            per_room.setdefault(room, []).append((epoch, args))
        return [u for room, records in per_room.items() for u in self._units(room, records)]

    def _units(self, room: str, records: list[tuple[int, AppendArgs]]) -> list[SpoolUnit]:
        """A room's records as spool units: consecutive records with the same epoch, up to ``max_batch`` each."""
        units: list[SpoolUnit] = []
        items: list[AppendArgs] = []
        epoch = 0
        for e, args in records:
            if items and (e != epoch or len(items) >= self.max_batch):
                units.append(SpoolUnit(room, self._next_token(), epoch, items))
                items = []
            epoch = e
            items.append(args)
        if items:
            units.append(SpoolUnit(room, self._next_token(), epoch, items))
        return units

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

    async def _send(self, batches: list[_Batch]) -> list[object]:
        pipe = self._redis.pipeline(transaction=False)
        for b in batches:
            pipe.evalsha(_APPEND_SHA, 3, self.keys.events(b.room), self.keys.meta(b.room),
                         self.keys.lease(b.room), b.epoch, -1, b.token, self._maxlen, frame_batch(b.items))
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


def _settle_all(requests: list[_ToSpool], exc: BaseException | None) -> None:
    for r in requests:
        if r.done.done():
            continue
        if exc is None:
            r.done.set_result(None)
        else:
            r.done.set_exception(exc)


def _retrieve(future: asyncio.Future[None]) -> None:
    """A waiter may be gone (cancelled): its request's outcome must not be reported as never retrieved."""
    if not future.cancelled():
        future.exception()
