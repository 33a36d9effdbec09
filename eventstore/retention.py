"""Retention: rooms whose calls are over leave Redis for the archive (:mod:`eventstore.archive`), and come back
from it whenever they are read.

A room is archived when nobody wants it any more and every projection has folded all of it:

- it is not desired (``rs:desired``) and no daemon holds its lease;
- its last record is older than ``archive_after`` seconds (Redis time of the last stream entry);
- every registered projection (``projections``: the ones this deployment runs) has checkpointed its last seq.

Archiving one room (:meth:`Archiver.archive_room`), each step safe to crash after and to redo:

1. take the room's archiving lock (``rs:room:{R}:archiving``, ``lock_ttl`` seconds, extended while the room is
   read, so that several archivers at once never work on the same room; one killed leaves it to expire);
2. read the stream entries after what the archive already holds and write them as a segment (file, fsync, rename;
   manifest last: a segment counts once its manifest exists), then read the segment back and verify it;
3. in one script on the room's slot, only if the room's seq is still the segment's last seq (nothing new was
   written) and no lease is held: delete the stream, meta, lease, once hash and projection states, and leave a
   tombstone (``rs:room:{R}:archived``: the last seq, ~70 bytes) so that a room written again continues at seq + 1
   (the append script reads it when the room has no meta, and removes it). The tombstone expires after
   ``tombstone_ttl`` (a day by default; 0: never), so that Redis does not keep a trace of every call ever made;
   a room written again after that gets it back from the archive first (:class:`SequenceRestorer`);
4. take the room out of the room index (``rs:rooms``; another slot, so a separate command: a crash before it leaves
   an entry the next pass removes).

A room that lives on (desired, held, or recent) and holds more than ``keep_records`` records in Redis is trimmed
instead (:meth:`Archiver.trim_room`): the records every projection has folded, except the last ``keep_records``,
are archived as a segment first (written, verified), then trimmed from the stream (``XTRIM MINID``); readers and
consumers given the archive read the trimmed part from it.

Each pass also trims the feed partitions (``rs:feed:<n>``) behind every consumer group reading them (the oldest
entry a group has not been delivered or not acknowledged stays): notifications every group has handled are of no
more use, and without this they would pile up to the feed's MAXLEN.

A crash after 2 leaves a complete segment whose records are also still in Redis: readers take each seq once
(archive first, then Redis after the archive's last seq), and the next pass archives nothing new and finishes 3
and 4. The archive is the only copy from 3 on: the archive directory must be on storage the operator keeps.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import Sequence

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .archive import ArchiveStore
from .groups import drop_idle_consumers
from .keys import Keys

log = logging.getLogger("eventstore")

PAGE = 1000  # stream entries per XRANGE

# KEYS[1] lock; ARGV[1] token, ARGV[2] ms. Extend the lock if it is still ours.
_EXTEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""

# KEYS[1] events, [2] meta, [3] lease, [4] once, [5] archiving lock, [6] tombstone, [7..] projection states
# ARGV[1] the archived last seq, ARGV[2] the lock's token, ARGV[3] ms the tombstone lives (0: until written again)
_REMOVE = """
if redis.call('GET', KEYS[5]) ~= ARGV[2] then return {'UNLOCKED', 0} end
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
if seq ~= tonumber(ARGV[1]) then return {'CHANGED', seq} end
local expires = tonumber(redis.call('HGET', KEYS[3], 'expires') or '0')
local t = redis.call('TIME')
if expires > tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) then return {'HELD', expires} end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
for i = 7, #KEYS do redis.call('DEL', KEYS[i]) end
if tonumber(ARGV[3]) > 0 then redis.call('SET', KEYS[6], ARGV[1], 'PX', ARGV[3])
else redis.call('SET', KEYS[6], ARGV[1]) end
return {'OK', seq}
"""

# KEYS[1] meta, [2] tombstone; ARGV[1] the archive's last seq, ARGV[2] ms the tombstone lives (0: until written).
# Only for a room with no meta (nothing of it in Redis) whose tombstone, if any, says less.
_RESTORE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[1]) then return 0 end
if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
else redis.call('SET', KEYS[2], ARGV[1]) end
return 1
"""


@dataclass
class PassResult:
    """What one pass did: rooms archived, and why the others were left (reason -> count)."""

    archived: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    feed_trimmed: int = 0
    trimmed: int = 0  # records of rooms that live on, archived and trimmed from their streams

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


class SeqReused(RuntimeError):
    """A room's seqs started again below what is archived (its tombstone was lost); it is left in Redis."""


def _id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    ms, _, n = text.partition("-")
    return int(ms), int(n or 0)


@dataclass(frozen=True, slots=True)
class _Standing:
    why_not: str  # '' when the room may be archived
    seq: int = 0


class Archiver:
    def __init__(self, redis: aioredis.Redis, archive: ArchiveStore, *, keys: Keys | None = None,
                 projections: Sequence[str] = ("participants", "call-state"), archive_after: float = 3600.0,
                 lock_ttl: float = 60.0, keep_records: int = 0, tombstone_ttl: float = 86400.0) -> None:
        self._redis = redis
        self.archive = archive
        self.keys = keys or Keys()
        self.projections = tuple(projections)
        self.archive_after = archive_after
        self.instance = uuid.uuid4().hex[:12]
        self.lock_ms = max(1, int(lock_ttl * 1000))
        self.keep_records = keep_records  # 0: rooms that live on are never trimmed
        self.tombstone_ms = max(0, int(tombstone_ttl * 1000))  # 0: a tombstone stays until the room is written
        self._remove = redis.register_script(_REMOVE)
        self._extend = redis.register_script(_EXTEND)

    async def run_pass(self, limit: int = 10_000) -> PassResult:
        """One pass over the room index: archive every room that may be (up to ``limit`` looked at)."""
        result = PassResult()
        cursor = 0
        seen = 0
        while seen < limit:
            cursor, items = await self._redis.zscan(self.keys.rooms(), cursor, count=200)
            for raw, _score in items:
                seen += 1
                room = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else str(raw)
                await self._one(room, result)
            if cursor == 0:
                break
        result.feed_trimmed = await self.trim_feeds()
        return result

    async def trim_feeds(self) -> int:
        """Trim every feed partition behind all of its consumer groups; returns the entries removed."""
        raw = await self._redis.get(self.keys.feed_partitions())
        removed = 0
        for partition in range(int(raw or 0)):
            key = self.keys.feed(partition)
            try:
                groups = await self._redis.xinfo_groups(key)
            except ResponseError:  # no such stream
                continue
            if not groups:
                continue  # nobody reads it: MAXLEN alone bounds it
            for g in groups:  # members left by consumer instances that were killed (a clean exit leaves)
                await drop_idle_consumers(self._redis, key, g["name"])
            floor = min(_id(g["last-delivered-id"]) for g in groups)
            for g in groups:
                if int(g.get("pending") or 0):
                    summary = await self._redis.xpending(key, g["name"])
                    if summary.get("min"):
                        floor = min(floor, _id(summary["min"]))
            if floor > (0, 0):
                removed += int(await self._redis.xtrim(key, minid=f"{floor[0]}-{floor[1]}", approximate=False))
        return removed

    async def _one(self, room: str, result: PassResult) -> None:
        try:
            why = await self.archive_room(room)
        except Exception as exc:  # noqa: BLE001 - one room must not stop the pass; the next pass tries again
            log.error("archiver %s: room=%r: not archived: %s: %s", self.instance, room, type(exc).__name__, exc)
            result.skip("error")
            return
        if why in ("desired", "held", "recent") and self.keep_records > 0:
            try:
                result.trimmed += await self.trim_room(room)
            except Exception as exc:  # noqa: BLE001 - one room must not stop the pass
                log.error("archiver %s: room=%r: not trimmed: %s: %s", self.instance, room, type(exc).__name__, exc)
        if why:
            result.skip(why)
        else:
            result.archived.append(room)

    async def standing(self, room: str) -> _Standing:
        """Whether ``room`` may be archived now, and its seq."""
        k = self.keys
        pipe = self._redis.pipeline(transaction=False)
        pipe.hexists(k.desired(), room.encode("utf-8", "surrogateescape"))
        pipe.hget(k.meta(room), "seq")
        pipe.get(k.archived(room))
        pipe.hget(k.lease(room), "expires")
        pipe.xrevrange(k.events(room), count=1)
        pipe.execute_command("EVAL", "return redis.call('TIME')", 1, k.meta(room))  # the room's node's clock
        for name in self.projections:
            pipe.hget(k.state(room, name), "seq")
        desired, seq_raw, archived_raw, expires, last, now, *checkpoints = await pipe.execute()
        seq = int(seq_raw or archived_raw or 0)
        now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
        if desired:
            return _Standing("desired", seq)
        if seq_raw is None and archived_raw is not None:
            return _Standing("archived", seq)
        if expires is not None and int(expires) > now_ms:
            return _Standing("held", seq)
        if not last:
            return _Standing("empty", seq)
        last_ms = int(last[0][0].split(b"-")[0])
        if now_ms - last_ms < self.archive_after * 1000:
            return _Standing("recent", seq)
        if any(int(c or 0) < seq for c in checkpoints):
            return _Standing("not_folded", seq)
        return _Standing("", seq)

    async def archive_room(self, room: str) -> str:
        """Archive ``room`` if it may be; returns '' when it was archived, else why not."""
        standing = await self.standing(room)
        if standing.why_not:
            if standing.why_not == "archived":
                await self._redis.zrem(self.keys.rooms(), room.encode("utf-8", "surrogateescape"))
            return standing.why_not
        token = f"{self.instance}:{uuid.uuid4().hex[:8]}"
        lock = self.keys.archiving(room)
        if not await self._redis.set(lock, token, nx=True, px=self.lock_ms):
            return "locked"
        try:
            count = await self._export(room, standing.seq, lock, token)
            return await self._finish(room, standing.seq, token, count)
        finally:
            await self._unlock(lock, token)

    async def _export(self, room: str, seq: int, lock: str, token: str) -> int:
        """Write the stream's entries after the archive's last seq (up to ``seq``) as one verified segment.

        Entries at or below the archive's last seq must be older than its last entry (left by a crash before the
        removal); a newer one means the room's seqs started again below the archive (its tombstone was lost:
        Redis restarted without persistence): :class:`SeqReused`, and nothing is removed."""
        segments = await self.archive.segments(room)
        archived = segments[-1].last_seq if segments else 0
        last_id = _id(segments[-1].last_id) if segments else (0, 0)
        entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        start = "-"
        while True:
            page = await self._redis.xrange(self.keys.events(room), min=start, count=PAGE)
            for entry_id, fields in page:
                n = int(fields.get(b"seq", b"0"))
                if n <= archived and _id(entry_id) > last_id:
                    raise SeqReused(f"seq {n} written after the archive's last entry ({archived}); the room's "
                                    "tombstone was lost. Left in Redis: move its entries aside by hand")
                if archived < n <= seq:
                    entries.append((entry_id, fields))
            if len(page) < PAGE:
                break
            start = "(" + page[-1][0].decode()
            if not await self._extend(keys=[lock], args=[token, self.lock_ms]):
                raise RuntimeError("the archiving lock expired while the room was read")
        if archived >= seq:
            return 0
        if not entries or int(entries[-1][1][b"seq"]) != seq:
            raise RuntimeError(f"the stream holds seqs {archived + 1}..{seq} only in part ({len(entries)} entries)")
        manifest = await self.archive.put_segment(room, entries)
        await self.archive.verify_segment(room, manifest)
        return len(entries)

    async def _finish(self, room: str, seq: int, token: str, count: int) -> str:
        k = self.keys
        keys = [k.events(room), k.meta(room), k.lease(room), k.once(room), k.archiving(room), k.archived(room),
                *(k.state(room, name) for name in self.projections)]
        reply = await self._remove(keys=keys, args=[seq, token, self.tombstone_ms])
        status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if status != "OK":
            log.info("archiver %s: room=%r: archived up to seq %d but left in Redis: %s", self.instance, room, seq,
                     status.lower())
            return status.lower()
        await self._redis.zrem(k.rooms(), room.encode("utf-8", "surrogateescape"))
        log.info("archiver %s: room=%r: %d records archived (seq %d); removed from Redis", self.instance, room,
                 count, seq)
        return ""

    async def trim_room(self, room: str) -> int:
        """Archive and trim the folded records of a room that lives on, beyond its last ``keep_records``; returns
        how many were trimmed."""
        k = self.keys
        if await self._redis.xlen(k.events(room)) <= self.keep_records:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(k.meta(room), "seq")
        for name in self.projections:
            pipe.hget(k.state(room, name), "seq")
        seq_raw, *checkpoints = await pipe.execute()
        folded = min((int(c or 0) for c in checkpoints), default=int(seq_raw or 0))
        cutoff = min(folded, int(seq_raw or 0) - self.keep_records)
        archived = await self.archive.last_seq(room)
        if cutoff <= archived:
            return 0
        token = f"{self.instance}:{uuid.uuid4().hex[:8]}"
        lock = k.archiving(room)
        if not await self._redis.set(lock, token, nx=True, px=self.lock_ms):
            return 0
        try:
            await self._export(room, cutoff, lock, token)
            nxt = await self._first_after(room, cutoff)
            if nxt is None:
                return 0
            trimmed = int(await self._redis.xtrim(k.events(room), minid=nxt, approximate=False))
            log.info("archiver %s: room=%r: %d records up to seq %d archived and trimmed", self.instance, room,
                     trimmed, cutoff)
            return trimmed
        finally:
            await self._unlock(lock, token)

    async def _first_after(self, room: str, seq: int) -> str | None:
        """The entry id of the room's first record after ``seq`` (None if there is none)."""
        start = "-"
        while True:
            page = await self._redis.xrange(self.keys.events(room), min=start, count=PAGE)
            for entry_id, fields in page:
                if int(fields.get(b"seq", b"0")) > seq:
                    return entry_id.decode()
            if len(page) < PAGE:
                return None
            start = "(" + page[-1][0].decode()

    async def _unlock(self, lock: str, token: str) -> None:
        try:
            if await self._redis.get(lock) == token.encode():
                await self._redis.delete(lock)
        except (OSError, asyncio.TimeoutError):
            pass  # expires by itself



class SequenceRestorer:
    """Before a room is written again: if nothing of it is in Redis and its tombstone has expired
    (``tombstone_ttl``) but the archive holds it, put the archive's last seq back as its tombstone, so that the
    room continues at seq + 1 instead of starting again at 1 (which the archiver would find and refuse:
    :class:`SeqReused`). Writers that may revive archived rooms (the daemon's sessions, its webhook sink) call
    :meth:`restore` before their first record; a room with meta or a tombstone costs one round trip, a room new
    to Redis also one look into the archive (in a worker thread)."""

    def __init__(self, redis: aioredis.Redis, archive: ArchiveStore, *, keys: Keys | None = None,
                 tombstone_ttl: float = 86400.0) -> None:
        self._redis = redis
        self.archive = archive
        self.keys = keys or Keys()
        self.tombstone_ms = max(0, int(tombstone_ttl * 1000))
        self._restore = redis.register_script(_RESTORE)

    async def restore(self, room: str) -> int:
        """The archived last seq put back as ``room``'s tombstone; 0 when nothing had to be done."""
        meta, tomb = self.keys.meta(room), self.keys.archived(room)
        pipe = self._redis.pipeline(transaction=False)
        pipe.exists(meta)
        pipe.exists(tomb)
        if any(await pipe.execute()):
            return 0
        last = await self.archive.last_seq(room)
        if last and await self._restore(keys=[meta, tomb], args=[last, self.tombstone_ms]):
            log.info("room=%s: archived up to seq %d; its tombstone is back, so it continues at %d", room, last,
                     last + 1)
            return last
        return 0
