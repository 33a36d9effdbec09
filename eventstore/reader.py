"""Reading rooms: a range, from a sequence number, or followed live.

Stream entry ids are Redis-assigned (``<ms>-<n>``); the per-room sequence number lives in the entry. Reading
"from sequence S" therefore finds the first entry with ``seq > S`` by bisecting the stream on entry ids (a
few dozen ``XRANGE ... COUNT 1`` calls at most), then reads forward.

An entry that does not decode (written by someone else, or by a newer schema) is never fatal: it is passed
to ``on_undecodable`` (consumers send it to the dead-letter stream) and skipped.

With an ``archive`` (:mod:`eventstore.archive`), a room's records are read from the archive first and then from
Redis after the archive's last seq: a room archived (and removed from Redis), trimmed behind its consumers, or
archived and joined again reads as one gapless sequence, each seq once.
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Mapping, Union

import redis.asyncio as aioredis

from .archive import ArchiveStore
from .codec import DecodeError, decode_entry
from .keys import Keys
from .records import AnyRecord

log = logging.getLogger("eventstore")


@dataclass(frozen=True, slots=True)
class Undecodable:
    """An entry that is not a record: where it is, why, and its raw fields."""

    room: str
    entry_id: str
    reason: str
    fields: Mapping[bytes, bytes]


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """Yielded by ``follow`` when everything written so far has been delivered."""

    room: str | None
    seq: int


UndecodableHook = Callable[[Undecodable], Awaitable[None]]
FollowItem = Union[AnyRecord, CaughtUp]


def _entry_seq(fields: Mapping[bytes, bytes]) -> int | None:
    raw = fields.get(b"seq")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _next_id(entry_id: bytes | str) -> str:
    """The smallest id after ``entry_id`` (for exclusive ranges that work on Redis 6.2+ and 7.0)."""
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, n = s.partition("-")
    return f"{ms}-{int(n or 0) + 1}"


class RoomReader:
    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None, *,
                 on_undecodable: UndecodableHook | None = None, archive: ArchiveStore | None = None) -> None:
        self._redis = redis
        self.keys = keys or Keys()
        self._on_undecodable = on_undecodable
        self.archive = archive

    async def last_seq(self, room: str) -> int:
        """The room's last seq: its meta, or the tombstone of an archived room."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(self.keys.meta(room), "seq")
        pipe.get(self.keys.archived(room))
        raw, archived = await pipe.execute()
        return int(raw or archived or 0)

    async def _first_seq_from(self, key: str, ms: int) -> float:
        """The seq of the first record with id >= ``ms``-0 (infinity if none). Entries that do not decode are
        passed over: a foreign entry's ``seq`` field could say anything and mislead the bisection."""
        start = f"{ms}-0"
        while True:
            page = await self._redis.xrange(key, min=start, count=64)
            for _, fields in page:
                if _entry_seq(fields) is not None:
                    try:
                        return decode_entry(fields).seq
                    except DecodeError:
                        pass
            if len(page) < 64:
                return float("inf")
            start = _next_id(page[-1][0])

    async def position_after(self, room: str, seq: int) -> str:
        """An entry id from which reading finds every record with a sequence number above ``seq``.

        Bisects on the millisecond part of entry ids for the first millisecond whose first entry has a
        greater seq, then starts one millisecond earlier (a millisecond can hold entries on both sides).
        """
        if seq <= 0:
            return "-"
        key = self.keys.events(room)
        last = await self._redis.xrevrange(key, count=1)
        if not last:
            return "-"
        first = await self._redis.xrange(key, count=1)
        lo = int(first[0][0].split(b"-")[0])
        hi = int(last[0][0].split(b"-")[0]) + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if await self._first_seq_from(key, mid) > seq:
                hi = mid
            else:
                lo = mid + 1
        return f"{max(lo - 1, 0)}-0"

    async def entries(self, room: str, start: str = "-", *, count: int = 1000):
        """Raw (id, fields) entries from ``start`` (inclusive) in pages of ``count``."""
        key = self.keys.events(room)
        while True:
            page = await self._redis.xrange(key, min=start, count=count)
            for entry in page:
                yield entry
            if len(page) < count:
                return
            start = _next_id(page[-1][0])

    async def decode(self, room: str, entry_id: bytes, fields: Mapping[bytes, bytes]) -> AnyRecord | None:
        try:
            return decode_entry(fields)
        except DecodeError as exc:
            await self._report(room, entry_id, fields, exc)
            return None

    async def _report(self, room: str, entry_id: bytes, fields: Mapping[bytes, bytes], exc: DecodeError) -> None:
        bad = Undecodable(room, entry_id.decode(), f"{exc.reason}: {exc.detail}", fields)
        if self._on_undecodable is not None:
            await self._on_undecodable(bad)
        else:
            log.warning("room %r: entry %s skipped: %s", room, bad.entry_id, bad.reason)

    async def _scan(self, room: str, since: int, until: int | None,
                    count: int) -> AsyncIterator[tuple[bytes, AnyRecord | None]]:
        """Every entry from the position after ``since`` as (entry id, record), the record being None unless
        ``since < seq <= until``. Undecodable entries after record ``since`` (and up to record ``until``) go to
        ``on_undecodable``; the range is decided on decoded records only, never on a foreign entry's fields."""
        if until is not None and until <= since:
            return
        if self.archive is not None:
            archived = await self.archive.last_seq(room)
            if since < archived:
                async with aclosing(self._archived(room, since, until)) as old:
                    async for entry_id, record in old:
                        yield entry_id, record
                        if until is not None and record is not None and record.seq >= until:
                            return
                since = archived
        start = await self.position_after(room, since)
        in_range = since <= 0
        async for entry_id, fields in self.entries(room, start, count=count):
            try:
                record = decode_entry(fields)
            except DecodeError as exc:
                if in_range:
                    await self._report(room, entry_id, fields, exc)
                yield entry_id, None
                continue
            if record.seq <= since:
                in_range = record.seq == since
                yield entry_id, None
                continue
            in_range = True
            yield entry_id, record
            if until is not None and record.seq >= until:
                return

    async def _archived(self, room: str, since: int,
                        until: int | None) -> AsyncIterator[tuple[bytes, AnyRecord | None]]:
        assert self.archive is not None
        async with aclosing(self.archive.entries(room, since)) as entries:
            async for entry_id, fields in entries:
                raw_id = entry_id.encode()
                try:
                    record = decode_entry(fields)
                except DecodeError as exc:
                    await self._report(room, raw_id, fields, exc)
                    yield raw_id, None
                    continue
                yield raw_id, record
                if until is not None and record.seq >= until:
                    return

    async def iter_room(self, room: str, since: int = 0, *, until: int | None = None,
                        count: int = 1000) -> AsyncIterator[AnyRecord]:
        """Records of ``room`` with ``since < seq <= until``, in order."""
        async for _, record in self._scan(room, since, until, count):
            if record is not None:
                yield record

    async def read(self, room: str, since: int = 0, until: int | None = None) -> list[AnyRecord]:
        return [r async for r in self.iter_room(room, since, until=until)]

    async def follow(self, room: str, since: int = 0, *, block_ms: int = 1000,
                     count: int = 500) -> AsyncIterator[FollowItem]:
        """Records of ``room`` after ``since``, then live ones as they come; a :class:`CaughtUp` each time the
        reader has delivered everything written so far. Runs until the caller stops iterating."""
        key = self.keys.events(room)
        # Live reading starts after the last entry the backlog scan saw (not at the stream's tail, which may
        # already hold entries appended after the scan ended).
        last_id = "0-0"
        seq = since
        async for entry_id, record in self._scan(room, since, None, count):
            last_id = entry_id.decode()
            if record is not None:
                seq = record.seq
                yield record
        yield CaughtUp(room, seq)
        while True:
            reply = await self._redis.xread({key: last_id}, block=block_ms, count=count)
            if not reply:
                continue
            for entry_id, fields in reply[0][1]:
                last_id = entry_id.decode()
                record = await self.decode(room, entry_id, fields)
                if record is not None and record.seq > seq:
                    seq = record.seq
                    yield record
            yield CaughtUp(room, seq)
