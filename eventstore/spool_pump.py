"""The writer's hand-off to its spool: the spool pump, the one place that moves records into the spool.

Invariant: everything in the writer's memory is older than everything in the spool, so the flusher drains memory
first. It holds because one task, the spool pump, makes every decision that involves the spool, in the order the
records came: a record goes to memory only while the spool is empty and the pump idle; a spill moves *all* of
memory to the spool in one all-or-nothing write (a failed spill leaves memory and spool as they were, so a room
is never split between them); and while the spool holds anything, new records follow it there.

Callers hand the pump a request (:class:`_ToSpool`: one record, or "spill memory if it is full", or "spill all of
memory" at close) and wait for its outcome; the pump completes every request, also for a caller that was
cancelled meanwhile.

:class:`SpoolPump` is a part of :class:`eventstore.writer.EventWriter` (a mixin): it works on the writer's memory
queues and spool.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable

from .batches import RecordsNotWritten, WriterStats, _RoomQueue
from .codec import AppendArgs
from .spool import Spool, SpoolError, SpoolUnit

log = logging.getLogger("eventstore")


@dataclass
class _ToSpool:
    """A request to the spool pump: one record (room, epoch, args, when appended), or none (spill memory if it
    is full); ``force``: spill whatever memory holds (at close)."""

    item: tuple[str, int, AppendArgs, float] | None
    force: bool = False
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class SpoolPump:
    """The spool hand-off of :class:`~eventstore.writer.EventWriter` (a mixin: the writer sets these attributes
    and methods)."""

    producer: str
    max_batch: int
    max_pending: int
    stats: WriterStats
    _spool: Spool | None
    _rooms: dict[str, _RoomQueue]
    _pending: int
    _inbox: list[_ToSpool]
    _pump: asyncio.Task[None] | None
    _space: asyncio.Event
    _kick: Callable[[], None]
    _next_token: Callable[[], str]
    _queue: Callable[[str, AppendArgs, int, float], None]

    def _spool_holds_data(self) -> bool:
        return self._spool is not None and not self._spool.empty

    def _spool_mode(self) -> bool:
        """Records must go through the spool pump: the spool holds data, or the pump is deciding or writing."""
        return self._spool is not None and (self._pump is not None or not self._spool.empty)

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
