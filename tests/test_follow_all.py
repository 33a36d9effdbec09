"""follow_all: every record of every room, in order per room, each once; where it starts; trimmed feeds;
garbage; stopping. Against a real redis-server.

The follower reads through its own client, named ``follower``: a test that must write only once the follower
has taken its starting place waits until that client is blocked in ``XREAD`` (polled with a deadline).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

import pytest

from eventstore.connection import connect, is_cluster
from eventstore.follow import follow_all, room_positions
from eventstore.keys import Keys, partition_of
from eventstore.reader import Undecodable
from eventstore.records import AnyRecord, ParticipantConnected
from eventstore.writer import EventWriter
from harness.fixtures import both_redis_url  # noqa: F401 - every test here runs on one server and on a cluster

KEYS = Keys()
FOLLOWER = "follower"


@pytest.fixture
async def r(redis_url):
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def f(redis_url):
    """The follower's own client."""
    client = connect(redis_url, client_name=FOLLOWER)
    yield client
    await client.aclose()


def rec(room: str, n: int) -> ParticipantConnected:
    return ParticipantConnected(room=room, session="s", ts=1.0 + n, participant_id=f"p{n}")


async def write(r, room: str, n: int, start: int = 0, *, chunk: int = 1_000_000) -> None:
    """``n`` records to ``room``, flushed every ``chunk`` appends (several batches, several round trips)."""
    writer = EventWriter(r)
    await writer.start()
    try:
        for i in range(start, start + n):
            await writer.append(rec(room, i))
            if (i - start + 1) % chunk == 0:
                assert await writer.flush(timeout=30)
        assert await writer.flush(timeout=30)
    finally:
        await writer.aclose()


async def blocked_in_xread(r, timeout: float = 10.0) -> None:
    """Return once the follower's client waits in XREAD: it has taken its starting place."""
    async with asyncio.timeout(timeout):
        while True:
            if is_cluster(r):  # the follower polls each partition (no blocking XREAD over several slots)
                replies = await r.client_list(target_nodes=r.PRIMARIES)
                if any(c.get("name") == FOLLOWER and c.get("cmd") == "xread" for cs in replies.values() for c in cs):
                    return
            else:
                for c in await r.client_list():
                    if c.get("name") == FOLLOWER and c.get("cmd") == "xread" and "b" in c.get("flags", ""):
                        return
            await asyncio.sleep(0.01)


def by_room(records: list[AnyRecord]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for record in records:
        out.setdefault(record.room, []).append(record.seq)
    return out


class Collector:
    """Iterates a follower in a task, keeping what it yields; tests wait for a predicate on it."""

    def __init__(self, records: AsyncIterator[AnyRecord]) -> None:
        self.records: list[AnyRecord] = []
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._run(records), name="collector")

    async def _run(self, records) -> None:
        try:
            async with aclosing(records):
                async for record in records:
                    self.records.append(record)
                    self._changed.set()
        finally:
            self._changed.set()

    async def until(self, done: Callable[[dict[str, list[int]]], bool], timeout: float = 20.0) -> dict:
        async with asyncio.timeout(timeout):
            while not done(by_room(self.records)):
                if self.task.done():
                    self.task.result()  # raises what ended it
                    pytest.fail("the follower ended")
                self._changed.clear()
                await self._changed.wait()
        return by_room(self.records)

    async def cancel(self) -> None:
        self.task.cancel()
        done, _ = await asyncio.wait([self.task], timeout=5)
        assert done, "the follower did not stop within 5 s of being cancelled"
        if not self.task.cancelled():
            self.task.result()  # raises what ended it
            pytest.fail("the follower ended before it was cancelled")


def upto(want: dict[str, list[int]]) -> Callable[[dict[str, list[int]]], bool]:
    return lambda got: all(len(got.get(room, [])) >= len(seqs) for room, seqs in want.items())


async def test_new_records_of_concurrent_rooms_in_order_once(r, f):
    await write(r, "alpha", 5)
    await write(r, "beta {b}: ü", 3)
    col = Collector(follow_all(f, block_ms=100))
    try:
        await blocked_in_xread(r)
        # Two writers at once, each on two rooms, in many small batches; "gamma" and "delta" are new rooms.
        await asyncio.gather(
            write(r, "alpha", 120, 5, chunk=7), write(r, "gamma", 90, chunk=5),
            write(r, "beta {b}: ü", 100, 3, chunk=11), write(r, "delta", 60, chunk=3),
        )
        want = {"alpha": list(range(6, 126)), "beta {b}: ü": list(range(4, 104)), "gamma": list(range(1, 91)),
                "delta": list(range(1, 61))}
        await col.until(upto(want))
        # A last record: once it is in, anything delivered twice would be too.
        await write(r, "alpha", 1, 125)
        got = await col.until(lambda got: got.get("alpha", [])[-1:] == [126])
        want["alpha"].append(126)
        assert got == want
        assert [x.participant_id for x in col.records if x.room == "gamma"] == [f"p{n}" for n in range(90)]
    finally:
        await col.cancel()
    assert await f.ping()  # the cancelled XREAD left the client usable


async def test_a_room_created_after_the_start_and_before_any_writer(r, f):
    # Nothing in Redis at all: no feed partitions yet, no room index. The follower polls for the partition
    # count (there is no XREAD to wait for): its second look means it has taken its starting place.
    looked = 0
    polling = asyncio.Event()
    get = f.get

    async def counting_get(name, *args, **kw):
        nonlocal looked
        value = await get(name, *args, **kw)
        if name == KEYS.feed_partitions() and value is None:
            looked += 1
            if looked == 2:
                polling.set()
        return value

    f.get = counting_get
    col = Collector(follow_all(f, block_ms=100))
    try:
        async with asyncio.timeout(10):
            await polling.wait()
        await write(r, "first room", 4)
        await write(r, "second room", 2)
        got = await col.until(upto({"first room": [1] * 4, "second room": [1] * 2}))
        assert got == {"first room": [1, 2, 3, 4], "second room": [1, 2]}
    finally:
        await col.cancel()


async def test_since_a_mapping_reads_the_backlog_then_live(r, f):
    await write(r, "a", 5)
    await write(r, "b", 3)
    assert await room_positions(r) == {"a": 5, "b": 3}
    col = Collector(follow_all(f, since={"a": 3, "nobody": 9}, block_ms=100))
    try:
        got = await col.until(upto({"a": [4, 5], "b": [1, 2, 3]}))
        assert got == {"a": [4, 5], "b": [1, 2, 3]}
        await blocked_in_xread(r)
        await write(r, "b", 2, 3)
        await write(r, "c", 1)
        got = await col.until(upto({"b": [1] * 5, "c": [1]}))
        assert got == {"a": [4, 5], "b": [1, 2, 3, 4, 5], "c": [1]}
    finally:
        await col.cancel()


async def test_since_everything_and_since_now(r, f):
    await write(r, "a", 3)
    await write(r, "b", 2)
    async with aclosing(follow_all(f, since={}, block_ms=100)) as records:
        got = await take(records, 5)
    assert by_room(got) == {"a": [1, 2, 3], "b": [1, 2]}

    now = await room_positions(r)
    await write(r, "a", 1, 3)  # after the positions were taken, before follow_all starts: still delivered
    async with aclosing(follow_all(f, since=now, block_ms=100)) as records:
        [first] = await take(records, 1)
        assert (first.room, first.seq) == ("a", 4)


async def take(records: AsyncIterator[AnyRecord], n: int, timeout: float = 20.0) -> list[AnyRecord]:
    async with asyncio.timeout(timeout):
        return [await anext(records) for _ in range(n)]


def _room_in_partition(partition: int, avoid: str) -> str:
    return next(name for i in range(10_000) if partition_of(name := f"room-{i}", 16) == partition and name != avoid)


async def test_a_feed_trimmed_past_the_reader_is_noticed_and_rooms_rescanned(r, f, caplog):
    await write(r, "a", 1)
    await write(r, "b", 1)  # b's partition now has an entry: the follower's place in it
    p = partition_of("b", 16)
    d = _room_in_partition(p, "b")
    records = follow_all(f, block_ms=100, rescan_s=None)  # no periodic rescan: only the trim can explain it
    async with aclosing(records):
        first = asyncio.create_task(anext(records))
        await blocked_in_xread(r)
        await write(r, "a", 1, 1)
        assert (await first).seq == 2  # the follower is now paused after a record: it reads nothing
        await write(r, "b", 3, 1)
        await r.xtrim(KEYS.feed(p), maxlen=0, approximate=False)  # ... and the notifications of b are lost
        await write(r, d, 1)  # a new notification in that partition, read after the follower's (gone) place
        got = by_room(await take(records, 4))
    assert got == {"b": [2, 3, 4], d: [1]}
    assert "trimmed past this reader's place" in caplog.text


async def test_lost_notifications_are_found_by_the_periodic_rescan(r, f):
    await write(r, "a", 1)
    records = follow_all(f, block_ms=100, rescan_s=0.3)
    async with aclosing(records):
        first = asyncio.create_task(anext(records))
        await blocked_in_xread(r)
        await write(r, "a", 1, 1)
        assert (await first).seq == 2
        await write(r, "quiet", 2)
        for p in range(16):
            await r.xtrim(KEYS.feed(p), maxlen=0, approximate=False)  # no trace of "quiet" in any feed
        got = by_room(await take(records, 2))
    assert got == {"quiet": [1, 2]}


async def test_garbage_in_the_feeds_the_index_and_a_room_does_not_stop_it(r, f, caplog):
    await write(r, "g", 2)
    await r.zadd(KEYS.rooms(), {b"\xff\xfe": 1, b"": 1, b"ghost": 1})  # rescanned at start (since={})
    bad: list[Undecodable] = []

    async def on_bad(item: Undecodable) -> None:
        bad.append(item)

    col = Collector(follow_all(f, since={}, block_ms=100, on_undecodable=on_bad))
    try:
        await col.until(upto({"g": [1, 2]}))
        await blocked_in_xread(r)
        p = partition_of("g", 16)
        for fields in ({"nope": "x"}, {"room": b"\xff\xfe"}, {"room": ""}, {"room": "ghost"},
                       {"room": "no such room {x}"}):
            await r.xadd(KEYS.feed(p), fields)
        await r.xadd(KEYS.events("g"), {"hello": "world"})
        await r.xadd(KEYS.events("g"), {"type": "connected", "seq": "3", "rec": "{not json"})
        await r.xadd(KEYS.feed(p), {"room": "g"})
        await write(r, "g", 2, 2)
        await write(r, "h", 1)
        got = await col.until(upto({"g": [1] * 4, "h": [1]}))
        assert got == {"g": [1, 2, 3, 4], "h": [1]}
    finally:
        await col.cancel()
    assert [b.reason.split(":")[0] for b in bad] == ["missing_field", "invalid_json"]  # each reported once
    assert {b.room for b in bad} == {"g"}
    assert caplog.text.count("no room name") == 3
    assert "is not a room name" in caplog.text


async def test_undecodable_entries_are_logged_without_a_hook(r, f, caplog):
    await write(r, "g", 1)
    await r.xadd(KEYS.events("g"), {"x": "y"})
    await write(r, "g", 1, 1)
    async with aclosing(follow_all(f, since={}, block_ms=100)) as records:
        got = [x.seq for x in await take(records, 2)]
    assert got == [1, 2]
    assert "skipped" in caplog.text


async def test_leaving_the_loop_or_cancelling_stops_it_cleanly(r, f):
    await write(r, "a", 10)
    # break inside aclosing: closed on the spot
    async with aclosing(follow_all(f, since={}, block_ms=100)) as records:
        async for record in records:
            if record.seq == 3:
                break
    assert records.ag_frame is None  # finished
    # a plain break: the generator is closed when it is collected (the task guard checks nothing is left)
    async for record in follow_all(f, since={}, block_ms=100):
        if record.seq == 2:
            break
    # cancelled while it waits in XREAD
    col = Collector(follow_all(f, block_ms=4000))
    await blocked_in_xread(r)
    await col.cancel()
    # cancelled in the consumer's own code, between two records
    records = follow_all(f, since={}, block_ms=100)
    seen = asyncio.Event()

    async def slow() -> None:
        async with aclosing(records):
            async for _ in records:
                seen.set()
                await asyncio.Event().wait()  # handling a record takes forever

    task = asyncio.create_task(slow())
    async with asyncio.timeout(10):
        await seen.wait()
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert task.cancelled()
    assert records.ag_frame is None  # closed by aclosing on the way out
    assert await f.ping()


def test_bad_arguments_are_refused_at_the_call():
    redis = object()  # never used: the arguments are checked when follow_all is called
    for kw in ({"block_ms": 0}, {"count": 0}, {"rescan_s": 0}, {"since": {"": 1}}):
        with pytest.raises(ValueError):
            follow_all(redis, **kw)  # type: ignore[arg-type]
