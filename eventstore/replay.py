"""Rebuilding projection state from zero, straight from the log: ``replay`` (one room) and ``replay_many``
(every room of a deployment, several projections at once, with pipelined reads and whole-page decoding).

Nothing here reads or writes the consumer's materialized state (that is :mod:`eventstore.consumer`, which
re-exports these functions); the states are computed in memory and returned.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any, Iterable, Sequence, TypeVar

import msgspec
import redis.asyncio as aioredis

from .archive import ArchiveStore
from .codec import DecodeError, decode_entry
from .connection import honour_cancellation, is_cluster
from .keys import Keys
from .projections.base import Projection
from .reader import RoomReader, _next_id
from .records import RECORD_TYPES, AnyRecord, DataReceived

S = TypeVar("S")


async def replay(redis: aioredis.Redis, room: str, projection: Projection[S], *, keys: Keys | None = None,
                 until: int | None = None, archive: ArchiveStore | None = None) -> S:
    """The state of ``room`` rebuilt from zero (optionally only up to sequence ``until``); with ``archive``, from
    its archived records first."""
    reader = RoomReader(redis, keys, archive=archive)
    state = projection.initial(room)
    async for record in reader.iter_room(room, 0, until=until):
        state = projection.apply(state, record)
    return state


async def replay_many(redis: aioredis.Redis, rooms: Iterable[str], projections: Sequence[Projection[Any]], *,
                      keys: Keys | None = None, rooms_per_trip: int = 64, count: int = 1000,
                      pause_gc: bool = True, archive: ArchiveStore | None = None) -> dict[str, list[Any]]:
    """Every room's state rebuilt from zero, for several projections at once: ``{room: [state per projection]}``.

    The same states as ``replay(redis, room, p)`` for each room and projection (undecodable entries are skipped
    and logged the same way), for a whole deployment at a time: the XRANGEs of ``rooms_per_trip`` rooms share a
    round trip, and the next batch's request is sent before this one is folded (Redis works while Python
    folds); replies are taken as hiredis parses them (no per-entry dicts), the records of a page are decoded in
    one call, and each record is folded into every projection.

    With ``pause_gc`` (the default) Python's cyclic garbage collector is paused while it runs (for the whole
    process, so also for other tasks meanwhile): the entries, records and states it creates by the million hold
    no reference cycles and are freed by reference counting, and collections triggered by that many allocations
    traverse everything alive, which costs a tenth to a fifth of the time.

    With ``archive``, each archived room's records are folded from the archive first, then those in Redis after the
    archive's last seq.
    """
    keys = keys or Keys()
    reader = RoomReader(redis, keys, archive=archive)
    archived_rooms = set(await archive.rooms()) if archive is not None else set()
    applies = [p.apply for p in projections]
    out: dict[str, list[Any]] = {}
    todo = list(dict.fromkeys(rooms))
    batches = [todo[i : i + rooms_per_trip] for i in range(0, len(todo), rooms_per_trip)]
    if not batches:
        return out
    collecting = pause_gc and gc.isenabled()
    if collecting:
        gc.disable()
    try:
        async with _xrange_batches(redis, keys, count) as ahead:
            await ahead.send(batches[0])
            for n, batch in enumerate(batches):
                honour_cancellation()
                pages = await ahead.receive(len(batch))
                if n + 1 < len(batches):
                    await ahead.send(batches[n + 1])  # Redis prepares it while this batch is folded
                states = {room: [p.initial(room) for p in projections] for room in batch}
                old = [room for room in batch if room in archived_rooms]  # read side by side (file I/O in threads)
                done = dict(zip(old, await asyncio.gather(*(_fold_archived(reader, room, states[room], applies)
                                                            for room in old))))
                start: dict[str, str] = {}
                while batch:
                    more = []
                    for room, page in zip(batch, pages):
                        current = states[room]
                        records = await _decode_page(reader, room, page)
                        if room in done:  # records still in Redis that the archive holds too: each seq once
                            records = [r for r in records if r.seq > done[room]]
                        for k, apply in enumerate(applies):
                            state = current[k]
                            for record in records:
                                state = apply(state, record)
                            current[k] = state
                        if len(page) == count:  # a long room: its next page
                            start[room] = _next_id(page[-1][0])
                            more.append(room)
                    batch = more
                    if batch:
                        async with _xrange_batches(redis, keys, count) as extra:
                            await extra.send(batch, start)
                            pages = await extra.receive(len(batch))
                out.update(states)
    finally:
        if collecting:
            gc.enable()
    return out


async def _fold_archived(reader: RoomReader, room: str, current: list[Any], applies: list[Any]) -> int:
    """Fold the archived records of ``room`` into ``current`` (one state per projection); returns the last seq."""
    assert reader.archive is not None
    last = 0
    page: list[Any] = []  # in XRANGE's raw shape, so that the records are decoded together (_decode_page)
    for entry_id, fields in await reader.archive.read_room(room):
        last = int(fields[b"seq"])
        flat = [b"type", fields[b"type"], b"seq", fields[b"seq"], b"rec", fields[b"rec"]]
        if b"data" in fields:
            flat += [b"data", fields[b"data"]]
        page.append([entry_id.encode(), flat])
    records = await _decode_page(reader, room, page)
    for k, apply in enumerate(applies):
        state = current[k]
        for record in records:
            state = apply(state, record)
        current[k] = state
    return last


class _RawXrange:
    """XRANGEs on a connection of ``redis``'s pool, sent and received separately; replies as hiredis parses
    them (lists, no response callbacks). A connection left with replies unread (an error, a cancellation) is
    disconnected before it goes back to the pool."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, count: int) -> None:
        self._pool = redis.connection_pool
        self._keys = keys
        self._count = count
        self._conn: Any = None
        self._unread = 0

    async def __aenter__(self) -> _RawXrange:
        self._conn = await self._pool.get_connection()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._unread or exc[0] is not None:
                await self._conn.disconnect()
        finally:
            await self._pool.release(self._conn)

    async def send(self, rooms: list[str], start: dict[str, str] | None = None) -> None:
        start = start or {}
        commands = [("XRANGE", self._keys.events(room), start.get(room, "-"), "+", "COUNT", self._count)
                    for room in rooms]
        self._unread += len(commands)
        await self._conn.send_packed_command(self._conn.pack_commands(commands))

    async def receive(self, n: int) -> list[Any]:
        replies = []
        for _ in range(n):
            replies.append(await self._conn.read_response())
            self._unread -= 1
        return replies


class _ClusterXrange:
    """:class:`_RawXrange`'s interface on a Redis Cluster client: each batch's XRANGEs go out in one cluster
    pipeline (redis-py sends each node its rooms), sent when the batch is received; the parsed replies are put back
    in the raw shape ``[id, [field, value, ...]]``."""

    def __init__(self, redis: Any, keys: Keys, count: int) -> None:
        self._redis = redis
        self._keys = keys
        self._count = count
        self._pending: list[tuple[str, str]] = []

    async def __aenter__(self) -> _ClusterXrange:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._pending = []

    async def send(self, rooms: list[str], start: dict[str, str] | None = None) -> None:
        start = start or {}
        self._pending += [(room, start.get(room, "-")) for room in rooms]

    async def receive(self, n: int) -> list[Any]:
        todo, self._pending = self._pending[:n], self._pending[n:]
        pipe = self._redis.pipeline(transaction=False)
        for room, first in todo:
            pipe.xrange(self._keys.events(room), min=first, count=self._count)
        pages = await pipe.execute()
        return [[[entry_id, [x for kv in fields.items() for x in kv]] for entry_id, fields in page]
                for page in pages]


def _xrange_batches(redis: aioredis.Redis, keys: Keys, count: int) -> Any:
    return _ClusterXrange(redis, keys, count) if is_cluster(redis) else _RawXrange(redis, keys, count)


_page_decoder = msgspec.json.Decoder(list[AnyRecord])
_force_setattr = msgspec.structs.force_setattr
_TAG_BYTES: dict[type, bytes] = {cls: cls.__struct_config__.tag.encode() for cls in RECORD_TYPES}  # type: ignore


async def _decode_page(reader: RoomReader, room: str, page: list[Any]) -> list[AnyRecord]:
    """The records (seq > 0) of a page of raw XRANGE entries ``[id, [field, value, ...]]``, in order.

    Entries in the writer's layout (``type, seq, rec[, data]``) are decoded together in one call and checked like
    :func:`~eventstore.codec.decode_entry` checks them (the type and seq fields agree with the record); anything
    else, or a page with a bad entry, goes through ``decode_entry`` one by one (bad entries are reported)."""
    flats = [entry[1] for entry in page]
    try:
        records = _page_decoder.decode(b"[" + b",".join([f[5] for f in flats]) + b"]")
        tags = _TAG_BYTES
        if (len(records) == len(flats)  # not: a field holding more than one JSON value
                and [f[1] for f in flats] == [tags[type(r)] for r in records]
                and [int(f[3]) for f in flats] == [r.seq for r in records]
                and all(f[0] == b"type" and f[2] == b"seq" and f[4] == b"rec" for f in flats)):
            for record, f in zip(records, flats):
                if len(f) == 6:
                    if type(record) is DataReceived:
                        raise ValueError("data_received without its data field")
                elif len(f) == 8 and f[6] == b"data" and type(record) is DataReceived:
                    # the payload is its own field (the JSON has "data":""); the record is ours alone so far
                    _force_setattr(record, "data", f[7])
                else:
                    raise ValueError("unexpected fields")
            return [r for r in records if r.seq > 0]
    except (msgspec.DecodeError, IndexError, TypeError, ValueError):
        pass
    out = []
    for entry_id, f in page:
        fields = dict(zip(f[::2], f[1::2]))
        try:
            record = decode_entry(fields)
        except DecodeError:
            await reader.decode(room, entry_id, fields)  # reported like replay() does
            continue
        if record.seq > 0:
            out.append(record)
    return out
