"""The consumer runner: keeps a projection's per-room state in Redis up to date with the log.

For each room with news it reads the room stream after the room's checkpoint, folds the records with the
projection's pure reducer, and writes ``state`` plus checkpoint (``seq`` and entry ``id``) into the room's
state hash in one compare-and-set step: the write happens only if the checkpoint is still the one it read. A
crash before the write changes nothing (the same records are folded again); a crash after it skips nothing
(the next run starts after the new checkpoint). The per-room sequence number is the idempotency key: a record
at or below the checkpoint is never applied twice.

Rooms with news come from the feed partitions this instance owns (see :mod:`eventstore.groups`) and, at start
and whenever a partition is gained, from a scan of the room index for rooms behind their stream.

:func:`materialized` reads the state the runner keeps. Rebuilding a state from zero instead (:func:`replay`,
:func:`replay_many`) is :mod:`eventstore.replay`, re-exported here.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Generic, TypeVar

import redis.asyncio as aioredis

from .archive import ArchiveStore
from .connection import honour_cancellation
from .deadletter import DeadLetters
from .feed import load_partitions
from .groups import FeedEntry, FeedGroup
from .keys import Keys, partition_of
from .projections.base import Projection, StateCodec
from .reader import RoomReader, Undecodable, _next_id
from .replay import replay, replay_many

__all__ = ["Checkpoint", "ProjectionRunner", "ProjectionStore", "materialized", "replay", "replay_many"]

log = logging.getLogger("eventstore")
S = TypeVar("S")

# KEYS[1] state hash; ARGV: expected seq ('' = no state yet), new state, new seq, new id
_CAS = """
local cur = redis.call('HGET', KEYS[1], 'seq')
if (cur or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'seq', ARGV[3], 'id', ARGV[4])
return 1
"""


def _stream_id(raw: bytes | str | None) -> tuple[int, int]:
    """A stream entry id as a comparable pair (``(0, 0)`` for none)."""
    if not raw:
        return (0, 0)
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, n = text.partition("-")
    return (int(ms), int(n or 0))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    entry_id: str  # '' before the first record

    @property
    def raw_seq(self) -> str:
        return str(self.seq) if self.entry_id else ""


class ProjectionStore(Generic[S]):
    """Reads and writes one projection's materialized state and checkpoint per room."""

    def __init__(self, redis: aioredis.Redis, projection: Projection[S], keys: Keys | None = None) -> None:
        self._redis = redis
        self.projection = projection
        self.keys = keys or Keys()
        self.codec: StateCodec[S] = StateCodec(projection.state_type)
        self._cas = redis.register_script(_CAS)

    async def load(self, room: str) -> tuple[S, Checkpoint]:
        raw = await self._redis.hmget(self.keys.state(room, self.projection.name), "state", "seq", "id")
        if raw[0] is None:
            return self.projection.initial(room), Checkpoint(0, "")
        return self.codec.decode(raw[0]), Checkpoint(int(raw[1]), raw[2].decode())

    async def save(self, room: str, before: Checkpoint, state: S, after: Checkpoint) -> bool:
        key = self.keys.state(room, self.projection.name)
        args = [before.raw_seq, self.codec.encode(state), after.seq, after.entry_id]
        return bool(await self._cas(keys=[key], args=args))


class ProjectionRunner(Generic[S]):
    """Runs one projection as a member of the consumer group named after it."""

    def __init__(self, redis: aioredis.Redis, projection: Projection[S], *, keys: Keys | None = None,
                 instance: str | None = None, chunk: int = 1000, lease_ms: int = 10_000,
                 block_ms: int = 1000, archive: ArchiveStore | None = None) -> None:
        self._redis = redis
        self.keys = keys or Keys()
        self.projection = projection
        self.instance = instance or uuid.uuid4().hex[:12]
        self.store: ProjectionStore[S] = ProjectionStore(redis, projection, self.keys)
        self.dead = DeadLetters(redis, self.keys)
        # with an archive, a room archived (or trimmed) and written again is folded from its archived part first
        self.reader = RoomReader(redis, self.keys, on_undecodable=self._dead_letter, archive=archive)
        self.chunk = chunk
        self.lease_ms = lease_ms
        self.block_ms = block_ms
        self.group: FeedGroup | None = None
        self.applied = 0
        self._stop = asyncio.Event()
        self._renew_at = 0.0

    def stop(self) -> None:
        """Ask :meth:`run` to return after the room it is on."""
        self._stop.set()

    async def _dead_letter(self, bad: Undecodable) -> None:
        await self.dead.write(bad.room, f"consumer:{self.projection.name}", bad.entry_id, bad.reason,
                              dict(bad.fields))

    async def _keep_leases(self) -> None:
        """Renew the partition leases when due, also in the middle of long work: catching up a backlog can take
        longer than a lease, and an instance whose leases run out while it works has its partitions taken over
        (two instances on the same rooms) and finds them lost when it is done."""
        if self.group is None:
            return
        now = asyncio.get_running_loop().time()
        if now >= self._renew_at:
            self._renew_at = now + self.lease_ms / 3000
            await self.group.renew()

    def _owns(self, room: str) -> bool:
        return self.group is None or partition_of(room, self.group.partitions) in self.group.owned

    async def catch_up_room(self, room: str) -> int:
        """Apply every record of ``room`` after its checkpoint. Returns how many were applied (saved)."""
        applied = 0
        while True:
            await self._keep_leases()
            state, ckpt = await self.store.load(room)
            start = _next_id(ckpt.entry_id) if ckpt.entry_id else "-"
            page = await self._redis.xrange(self.keys.events(room), min=start, count=self.chunk)
            if not page:
                return applied
            seq = ckpt.seq
            folded = 0
            for entry_id, fields in page:
                record = await self.reader.decode(room, entry_id, fields)
                if record is None or record.seq <= seq:
                    continue
                if record.seq != seq + 1 and self.reader.archive is not None:
                    # not in Redis any more: archived (and written again since), or trimmed behind the archive
                    state, seq, more = await self._fold_archived(room, state, seq, record.seq - 1)
                    folded += more
                if record.seq != seq + 1:
                    log.error("room %r: %s sees a gap (%d -> %d); stream trimmed?", room,
                              self.projection.name, seq, record.seq)
                state = self.projection.apply(state, record)
                seq = record.seq
                folded += 1
            after = Checkpoint(seq, page[-1][0].decode())
            if not await self.store.save(room, ckpt, state, after):
                log.warning("room %r: %s checkpoint moved under us; reloading", room, self.projection.name)
                continue
            # Count a page once, when its state is saved: not per loop pass (the total so far), and not when
            # the compare-and-set refused it (those records are folded again from the newer checkpoint).
            applied += folded
            self.applied += folded
            if len(page) < self.chunk:
                return applied

    async def _fold_archived(self, room: str, state: S, seq: int, until: int) -> tuple[S, int, int]:
        """Fold the records after ``seq`` up to ``until`` from the archive; the state, its seq, how many."""
        folded = 0
        async for record in self.reader.iter_room(room, seq, until=until):
            state = self.projection.apply(state, record)
            seq = record.seq
            folded += 1
        return state, seq, folded

    async def rooms_behind(self, partitions: set[int], total: int) -> list[str]:
        """Rooms of ``partitions`` whose state is behind their stream: the last appended entry (``last`` in the
        room's meta hash) is after the checkpoint's entry. Not by sequence numbers: a record this version cannot
        decode (a type from a newer schema) is read and passed over but never applied, so its seq is never
        reached, and the room would look behind forever."""
        rooms: list[str] = []
        async for raw in self._redis.zscan_iter(self.keys.rooms(), count=1000):
            room = (raw[0] if isinstance(raw, tuple) else raw).decode("utf-8")
            if partition_of(room, total) in partitions:
                rooms.append(room)
        out: list[str] = []
        for i in range(0, len(rooms), 500):
            chunk = rooms[i : i + 500]
            pipe = self._redis.pipeline(transaction=False)
            for room in chunk:
                pipe.hmget(self.keys.meta(room), "seq", "last")
                pipe.hmget(self.keys.state(room, self.projection.name), "seq", "id")
            replies = await pipe.execute()
            for j, room in enumerate(chunk):
                (seq, last), (done_seq, done_id) = replies[2 * j], replies[2 * j + 1]
                if last:
                    behind = _stream_id(last) > _stream_id(done_id)
                else:  # no entry id in the meta hash: fall back to sequence numbers
                    behind = int(seq or 0) > int(done_seq or 0)
                if behind:
                    out.append(room)
        return out

    async def _handle(self, entries: list[FeedEntry]) -> None:
        rooms = dict.fromkeys(f.get(b"room", b"").decode("utf-8", "replace") for _, _, f in entries)
        for room in rooms:
            honour_cancellation()
            await self._keep_leases()
            if room and self._owns(room):  # a partition lost meanwhile is its new owner's job
                await self.catch_up_room(room)
        await self.group.ack(entries)  # type: ignore[union-attr]

    async def _on_gained(self, gained: set[int], total: int) -> None:
        assert self.group is not None
        for p in sorted(gained):
            pending = await self.group.reclaim(p)
            if pending:
                log.info("%s: reclaimed %d pending notifications of partition %d", self.instance, len(pending), p)
                await self._handle(pending)
        for room in await self.rooms_behind(gained, total):
            honour_cancellation()
            await self._keep_leases()
            if self._owns(room):
                await self.catch_up_room(room)

    async def run(self, *, until_caught_up: bool = False) -> int:
        """Consume until :meth:`stop` (or, with ``until_caught_up``, until no room of any partition is behind
        its stream: partitions held by another instance count too, so a burst run started next to a dead or
        busy instance waits for their leases instead of exiting with work left). Returns the number of records
        applied."""
        total = await load_partitions(self._redis, self.keys)
        self.group = FeedGroup(self._redis, self.keys, self.projection.name, self.instance, total,
                               lease_ms=self.lease_ms)
        loop = asyncio.get_running_loop()
        next_rebalance = 0.0
        try:
            while not self._stop.is_set():
                honour_cancellation()
                if loop.time() >= next_rebalance:
                    gained, _ = await self.group.rebalance()
                    next_rebalance = self._renew_at = loop.time() + self.lease_ms / 3000
                    await self._on_gained(gained, total)
                block = 50 if until_caught_up else self.block_ms
                entries = await self.group.read(block_ms=block)
                if entries:
                    await self._handle(entries)
                elif until_caught_up and not await self.rooms_behind(set(range(total)), total):
                    break
                elif not self.group.owned:
                    await self._wait(self.block_ms / 1000)
        finally:
            await self.group.release_all()
        return self.applied

    async def _wait(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass


async def materialized(redis: aioredis.Redis, room: str, projection: Projection[S], *,
                       keys: Keys | None = None) -> tuple[S, int]:
    """The consumer-maintained state of ``room`` and the sequence number it reflects."""
    state, ckpt = await ProjectionStore(redis, projection, keys).load(room)
    return state, ckpt.seq
