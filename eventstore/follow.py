"""Following every room: each record of every room as it is written, in order per room, each once.

:func:`follow_all` only reads, and is built on what the writers already keep:

- a **position per room**: the last sequence number delivered and the last entry id read. A room is read from
  there (``XRANGE`` after that entry id) and only records with a greater ``seq`` are delivered, so each record
  comes once and in sequence order however often its room is announced;
- the **feed partitions** ``rs:feed:<n>`` ("room R has new events", written after every append, at least
  once): read with ``XREAD`` from where they were when following started; each room they name is read;
- a **rescan** of the room index ``rs:rooms`` against each room's meta hash (``seq``, ``last``), reading every
  room that has entries after its position: at start when a starting point is given, as soon as a feed turns
  out to have been trimmed past this reader's place in it (its notifications are lost), and every
  ``rescan_s`` seconds as a safety net for notifications that never came (on Redis Cluster a notification can
  land before its append, the two being in different slots).

Garbage is never fatal: a feed entry without a usable ``room`` field is skipped with a warning; a room stream
entry that does not decode goes to ``on_undecodable`` (as with :class:`~eventstore.reader.RoomReader`), or is
logged and skipped, once.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

from .codec import DecodeError, decode_entry
from .connection import honour_cancellation, is_cluster, read_streams_apart
from .keys import Keys, encode_name
from .reader import RoomReader, UndecodableHook, _next_id
from .records import AnyRecord

__all__ = ["follow_all", "room_positions"]

log = logging.getLogger("eventstore")

_META_CHUNK = 500


@dataclass(slots=True)
class _Position:
    """Where a room is read from: records up to ``seq`` are delivered (or were before the start); ``entry_id``
    is the last entry read, None until known (the first read then finds ``seq`` by bisection)."""

    seq: int
    entry_id: str | None


def _id_pair(entry_id: str) -> tuple[int, int]:
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)


def _decode_text(raw: bytes | None) -> str | None:
    """A room name from Redis bytes: None when missing, empty or not UTF-8."""
    if not raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


async def _room_index(redis: aioredis.Redis, keys: Keys) -> list[str]:
    """Every room in ``rs:rooms``; a member that is not a room name is logged and left out."""
    rooms: list[str] = []
    cursor = 0
    while True:
        cursor, page = await redis.zscan(keys.rooms(), cursor, count=1000)
        for member, _ in page:
            room = _decode_text(member)
            if room is None:
                log.warning("%s: member %r is not a room name; skipped", keys.rooms(), member[:200])
            else:
                rooms.append(room)
        if not cursor:
            return rooms


async def _metas(redis: aioredis.Redis, keys: Keys, rooms: list[str]) -> dict[str, tuple[int, str | None]]:
    """``room -> (last seq, last entry id)`` from the rooms' meta hashes (rooms without one are left out)."""
    out: dict[str, tuple[int, str | None]] = {}
    for i in range(0, len(rooms), _META_CHUNK):
        chunk = rooms[i : i + _META_CHUNK]
        pipe = redis.pipeline(transaction=False)
        for room in chunk:
            pipe.hmget(keys.meta(room), "seq", "last")
        for room, (seq, last) in zip(chunk, await pipe.execute()):
            if seq is None and last is None:
                continue
            try:
                n = int(seq or 0)
            except ValueError:
                n = 0
            out[room] = (n, last.decode() if last else None)
    return out


async def room_positions(redis: aioredis.Redis, *, keys: Keys | None = None) -> dict[str, int]:
    """Every room's last sequence number, now: ``{room: seq}``.

    Passed as ``since`` to :func:`follow_all` it means "from now on" for every existing room, like the default,
    but as a mapping a program can keep up to date (``positions[record.room] = record.seq`` once a record is
    handled) and save, to resume after a restart with nothing lost and nothing repeated."""
    keys = keys or Keys()
    return {room: seq for room, (seq, _) in (await _metas(redis, keys, await _room_index(redis, keys))).items()}


class _Follower:
    """The state of one :func:`follow_all`: a position per room and per feed partition, and the next rescan."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, since: Mapping[str, int] | None, *, block_ms: int,
                 count: int, rescan_s: float | None, on_undecodable: UndecodableHook | None) -> None:
        self._redis = redis
        self.keys = keys
        self._reader = RoomReader(redis, keys, on_undecodable=on_undecodable)
        self._block_ms = block_ms
        self._count = count
        self._rescan_s = rescan_s
        self._from_now = since is None
        self.positions = {room: _Position(max(int(seq), 0), None) for room, seq in (since or {}).items()}
        self._feeds: dict[str, str] = {}  # feed key -> last entry id read
        self._rescan_at = 0.0

    async def start(self) -> None:
        """Take the feeds' places first, then (with no starting point) every room's: a record appended after
        its room's place is announced after the feed's place, so it is read; one before is not delivered."""
        await self._load_feeds(at_tail=True)
        if self._from_now:
            for room, (seq, last) in (await _metas(self._redis, self.keys,
                                                   await _room_index(self._redis, self.keys))).items():
                self.positions[room] = _Position(seq, last)
            self._schedule_rescan()
        # else: a rescan is due now: it reads every room behind the given starting point

    def _schedule_rescan(self) -> None:
        now = asyncio.get_running_loop().time()
        self._rescan_at = now + self._rescan_s if self._rescan_s is not None else math.inf

    async def _load_feeds(self, *, at_tail: bool) -> bool:
        """Learn the feed partitions (False while no writer has fixed their number) and where to read them from:
        their current last entries, or (feeds that appeared after the start) their beginning."""
        raw = await self._redis.get(self.keys.feed_partitions())
        if raw is None:
            return False
        total = int(raw)
        if total < 1:
            raise ValueError(f"invalid partition count {total} in {self.keys.feed_partitions()}")
        names = [self.keys.feed(p) for p in range(total)]
        if not at_tail:
            self._feeds = dict.fromkeys(names, "0-0")
            return True
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.xrevrange(name, count=1)
        tails = await pipe.execute()
        self._feeds = {name: tail[0][0].decode() if tail else "0-0" for name, tail in zip(names, tails)}
        return True

    async def rooms_with_news(self) -> list[str]:
        """Rooms that may have records after their position: every room behind when a rescan is due, else the
        rooms the feeds announce within ``block_ms`` (often none)."""
        if asyncio.get_running_loop().time() >= self._rescan_at:
            self._schedule_rescan()
            metas = await _metas(self._redis, self.keys, await _room_index(self._redis, self.keys))
            return [room for room, (seq, last) in metas.items() if self._behind(room, seq, last)]
        if not self._feeds and not await self._load_feeds(at_tail=False):
            await asyncio.sleep(self._block_ms / 1000)  # no writer has run yet: nothing can be announced
            return []
        return await self._read_feeds()

    def _behind(self, room: str, seq: int, last: str | None) -> bool:
        pos = self.positions.get(room)
        if pos is None:
            return seq > 0 or last is not None
        if last is not None and pos.entry_id is not None:
            return _id_pair(last) > _id_pair(pos.entry_id)
        return seq > pos.seq

    async def _read_feeds(self) -> list[str]:
        """One ``XREAD`` of every feed: the rooms announced, in order, once each."""
        if is_cluster(self._redis):  # the feeds live on several slots: one read each
            feeds = dict(self._feeds)
            reply = await read_streams_apart(
                self._redis, lambda pipe: [pipe.xread({key: at}, count=self._count) for key, at in feeds.items()],
                self._block_ms)
        else:
            reply = await self._redis.xread(self._feeds, block=self._block_ms, count=self._count)
        rooms: dict[str, None] = {}
        read_from: dict[str, str] = {}
        for key, entries in reply or []:
            name = key.decode()
            read_from[name] = self._feeds[name]
            self._feeds[name] = entries[-1][0].decode()
            for entry_id, fields in entries:
                room = _decode_text(fields.get(b"room"))
                if room is None:
                    log.warning("feed %s: entry %s skipped: no room name in %.200r", name, entry_id.decode(),
                                fields)
                else:
                    rooms[room] = None
        if await self._trimmed(read_from):
            self._rescan_at = 0.0
        return list(rooms)

    async def _trimmed(self, read_from: dict[str, str]) -> bool:
        """Whether a feed lost entries after the place it was just read from: that entry is gone (trimming
        removes the oldest entries first, so while it exists, everything after it does too)."""
        checked = [(name, entry_id) for name, entry_id in read_from.items() if entry_id != "0-0"]
        if not checked:
            return False
        pipe = self._redis.pipeline(transaction=False)
        for name, entry_id in checked:
            pipe.xrange(name, min=entry_id, max=entry_id, count=1)
        gone = [name for (name, _), found in zip(checked, await pipe.execute()) if not found]
        if gone:
            log.warning("feeds %s were trimmed past this reader's place: notifications may be lost, "
                        "rescanning every room", gone)
        return bool(gone)

    async def read(self, room: str) -> tuple[list[AnyRecord], bool]:
        """The records of ``room`` after its position in the next ``count`` entries, and whether more entries may
        follow. Moves the position past those entries."""
        pos = self.positions.get(room) or _Position(0, None)
        if pos.entry_id is not None:
            start = _next_id(pos.entry_id)
        elif pos.seq > 0:
            start = await self._reader.position_after(room, pos.seq)
        else:
            start = "-"
        page = await self._redis.xrange(self.keys.events(room), min=start, count=self._count)
        if not page:
            return [], False
        # Undecodable entries are reported once, when first passed; not those before the starting point (a
        # position found by bisection may start up to a millisecond early).
        located = pos.entry_id is not None or pos.seq <= 0
        seq = pos.seq
        records: list[AnyRecord] = []
        for entry_id, fields in page:
            record = await self._decode(room, entry_id, fields, report=located)
            if record is None:
                continue
            located = located or record.seq >= pos.seq
            if record.seq <= seq:
                continue
            if record.seq > seq + 1:
                log.warning("room %r: records %d to %d are not in the stream (trimmed, or not decodable)",
                            room, seq + 1, record.seq - 1)
            seq = record.seq
            records.append(record)
        self.positions[room] = _Position(seq, page[-1][0].decode())
        return records, len(page) == self._count

    async def _decode(self, room: str, entry_id: bytes, fields: Mapping[bytes, bytes], *,
                      report: bool) -> AnyRecord | None:
        if report:
            return await self._reader.decode(room, entry_id, fields)
        try:
            return decode_entry(fields)
        except DecodeError:
            return None


def follow_all(redis: aioredis.Redis, *, keys: Keys | None = None, since: Mapping[str, int] | None = None,
               block_ms: int = 1000, count: int = 500, rescan_s: float | None = 60.0,
               on_undecodable: UndecodableHook | None = None) -> AsyncGenerator[AnyRecord, None]:
    """Every record of every room, as it is written: an async iterator that runs until the caller stops.

    Where it starts: with ``since=None`` (the default), at the records appended after the call starts (each
    room known then from its last seq then; a room that appears later from its first record). With
    ``since={room: seq}``, at the records after ``seq`` of those rooms and at the first record of every other
    room: first the backlog, then live; ``since={}`` is the whole log, ``since=await room_positions(redis)``
    "from now" as a mapping to keep and save for resuming.

    Guarantees, for one iterator: each room's records come in sequence order, each once; every record written
    after the starting point comes, as long as it is in the room's stream when read (streams trimmed with a
    ``MAXLEN`` lose their oldest records: a gap is logged). Records of different rooms interleave in no
    particular order. A record comes as soon as its notification is read (``XREAD`` waits up to ``block_ms``
    at a time for one); a record whose notification is lost comes with the next rescan: at once when a feed
    was trimmed past this reader, else within ``rescan_s`` (None: no periodic rescan). Each rescan reads the
    whole room index and every room's meta hash (pipelined). Nothing is ever written to Redis. Garbage is
    skipped (see the module doc). Limits: ``since`` is read once, at the call; a room whose stream and meta
    were deleted and written again from seq 1 is not followed past its old seq.

    Stopping: leave the loop (``contextlib.aclosing`` closes the iterator at once), or cancel the task reading
    it. It starts no task of its own and holds nothing but the connection it is waiting on. A Redis error
    ends the iteration with that error; to go on, start again with ``since=`` the positions you kept.

    ``block_ms`` must be below the client's socket timeout (5 s with :func:`eventstore.connection.connect`).
    """
    if block_ms < 1 or count < 1 or (rescan_s is not None and rescan_s <= 0):
        raise ValueError(f"follow_all: block_ms={block_ms}, count={count}, rescan_s={rescan_s}")
    for room in since or {}:
        encode_name(room)  # raises InvalidKeyPart for a name that is no room's
    follower = _Follower(redis, keys or Keys(), since, block_ms=block_ms, count=count, rescan_s=rescan_s,
                         on_undecodable=on_undecodable)
    return _follow(follower)


async def _follow(follower: _Follower) -> AsyncGenerator[AnyRecord, None]:
    await follower.start()
    while True:
        honour_cancellation()
        for room in await follower.rooms_with_news():
            more = True
            while more:
                honour_cancellation()
                records, more = await follower.read(room)
                for record in records:
                    yield record
