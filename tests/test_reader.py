"""RoomReader: ranges, bisection on entry ids, following live, and garbage written by someone else."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from eventstore.codec import encode_record
from eventstore.connection import connect
from eventstore.deadletter import DeadLetters
from eventstore.keys import Keys
from eventstore.reader import CaughtUp, RoomReader, Undecodable
from eventstore.records import ParticipantConnected
from eventstore.writer import EventWriter
from harness.fixtures import both_redis_url  # noqa: F401 - every test here runs on one server and on a cluster

KEYS = Keys()


@pytest.fixture
async def r(redis_url):
    client = connect(redis_url)
    yield client
    await client.aclose()


def rec(room: str, n: int) -> ParticipantConnected:
    return ParticipantConnected(room=room, session="s", ts=1.0 + n, participant_id=f"p{n}")


async def write(r, room: str, n: int, start: int = 0) -> None:
    writer = EventWriter(r)
    await writer.start()
    for i in range(start, start + n):
        await writer.append(rec(room, i))
    assert await writer.flush(timeout=30)
    await writer.aclose()


async def xadd_record(r, room: str, seq: int, entry_id: str) -> None:
    """An entry exactly as the append script writes it, but at a chosen entry id."""
    record = msgspec.structs.replace(rec(room, seq), seq=seq)
    fields = {"type": "participant_connected", "seq": str(seq), "rec": encode_record(record)}
    await r.xadd(KEYS.events(room), fields, id=entry_id)


def garbage(room: str) -> list[tuple[dict, str]]:
    """Foreign entries and the reason each is refused with."""
    ok = encode_record(msgspec.structs.replace(rec(room, 0), seq=7))
    return [
        ({"hello": "world"}, "missing_field"),
        ({"type": "connected", "seq": "7", "rec": "{not json"}, "invalid_json"),
        ({"type": "teleported", "seq": "7",
          "rec": '{"type":"teleported","seq":7,"v":9,"room":"x","session":"s","ts":1.0,"where":"mars"}'},
         "unknown_type"),
        ({"type": "reconnecting", "seq": "7", "rec": ok}, "type_mismatch"),
        ({"type": "participant_connected", "seq": "8", "rec": ok}, "seq_mismatch"),
        ({"type": "participant_connected", "seq": "0", "rec": "[]"}, "invalid_record"),
        ({"type": "participant_connected", "seq": "999999", "rec": "{}"}, "invalid_record"),
        ({"type": "participant_connected", "seq": "NaN", "rec": ok}, "bad_seq"),
        ({"data": b"\xff\xfe\x00"}, "missing_field"),
    ]


async def test_garbage_is_skipped_reported_and_dead_lettered(r):
    room = "messy room {1}"
    bad_entries = garbage(room)
    for i, (fields, _) in enumerate(bad_entries):
        await write(r, room, 3, start=3 * i)
        await r.xadd(KEYS.events(room), fields)
    await write(r, room, 3, start=3 * len(bad_entries))
    total = 3 * (len(bad_entries) + 1)
    seen: list[Undecodable] = []
    dead = DeadLetters(r, KEYS)

    async def on_bad(bad: Undecodable) -> None:
        seen.append(bad)
        await dead.write(bad.room, KEYS.events(bad.room), bad.entry_id, bad.reason, bad.fields)

    reader = RoomReader(r, on_undecodable=on_bad)
    got = await reader.read(room)
    assert [x.seq for x in got] == list(range(1, total + 1))
    assert [x.participant_id for x in got] == [f"p{n}" for n in range(total)]
    assert [b.reason.split(":")[0] for b in seen] == [reason for _, reason in bad_entries]
    letters = await r.xrange(KEYS.dead())
    assert len(letters) == len(bad_entries)
    for (_, fields), bad, (orig, _) in zip(letters, seen, bad_entries):
        assert fields[b"room"].decode() == room
        assert fields[b"source"].decode() == KEYS.events(room)
        assert fields[b"source_id"].decode() == bad.entry_id
        assert fields[b"reason"].decode() == bad.reason
        raw = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in orig.items()}
        assert msgspec.msgpack.decode(fields[b"fields"]) == raw

    # Ranges across the garbage stay exact, whatever seq the garbage claims.
    for since, until in [(0, 5), (4, 17), (10, None), (26, 29), (29, None), (2, 2)]:
        part = await reader.read(room, since, until)
        assert [x.seq for x in part] == list(range(since + 1, (until if until is not None else total) + 1))


async def test_without_hook_garbage_is_logged_and_skipped(r, caplog):
    await write(r, "g", 2)
    await r.xadd(KEYS.events("g"), {"x": "y"})
    await write(r, "g", 2, start=2)
    got = await RoomReader(r).read("g")
    assert [x.seq for x in got] == [1, 2, 3, 4]
    assert "skipped" in caplog.text


async def test_read_since_until(r):
    await write(r, "ranges", 50)
    reader = RoomReader(r)
    assert await reader.last_seq("ranges") == 50
    for since, until, want in [(0, None, range(1, 51)), (10, None, range(11, 51)), (10, 20, range(11, 21)),
                               (49, None, [50]), (50, None, []), (60, None, []), (0, 0, []), (5, 5, []),
                               (-3, 2, [1, 2])]:
        assert [x.seq for x in await reader.read("ranges", since, until)] == list(want), (since, until)
    assert await reader.read("nobody-here") == []
    assert await reader.last_seq("nobody-here") == 0
    assert await reader.position_after("nobody-here", 5) == "-"


def _id_ms(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


async def test_position_after_with_crowded_and_sparse_milliseconds(r):
    room = "bisect"
    # 320 entries: 120 in one millisecond, runs of 1..7 per millisecond, gaps of 1 ms to a day.
    ids: list[str] = []
    ms, seq = 1_000, 0
    layout = [120] + [1, 2, 7, 3, 1, 1, 5] * 8 + [40]
    gaps = [1, 1, 2, 1000, 1, 86_400_000, 3, 1]
    for g, count in enumerate(layout):
        for k in range(count):
            seq += 1
            ids.append(f"{ms}-{k}")
            await xadd_record(r, room, seq, ids[-1])
        ms += gaps[g % len(gaps)]
    n = seq
    reader = RoomReader(r)
    for since in range(0, n + 2):
        pos = await reader.position_after(room, since)
        if since == 0:
            assert pos == "-"
        elif since < n:
            # The position is at or before the first entry after `since`, and at most one millisecond
            # before the millisecond of `since`'s own entry (it never rereads the whole stream).
            assert _id_ms(pos) <= _id_ms(ids[since])
            assert _id_ms(pos) >= _id_ms(ids[since - 1]) - 1
        if since % 5 == 0 or since in (1, 119, 120, 121, n - 1, n, n + 1):
            got = [x.seq for x in await reader.read(room, since)]
            assert got == list(range(since + 1, n + 1)), since
            got = [x.seq for x in await reader.read(room, since, since + 2)]
            assert got == list(range(since + 1, min(since + 2, n) + 1)), since


async def test_position_after_with_real_appends(r):
    await write(r, "fast", 3000)  # thousands of entries, many per millisecond
    reader = RoomReader(r)
    for since in [1, 2, 99, 100, 101, 1500, 2999, 3000]:
        assert [x.seq for x in await reader.read("fast", since, since + 3)] == \
            list(range(since + 1, min(since + 3, 3000) + 1))


async def test_bisection_is_not_misled_by_a_foreign_low_seq(r):
    room = "liar"
    for seq in range(1, 6):
        await xadd_record(r, room, seq, f"100-{seq}")
    await r.xadd(KEYS.events(room), {"type": "connected", "seq": "0", "rec": "{}"}, id="200-0")
    for seq in range(6, 11):
        await xadd_record(r, room, seq, f"300-{seq}")
    reader = RoomReader(r, on_undecodable=lambda bad: asyncio.sleep(0))
    for since in range(0, 11):
        assert [x.seq for x in await reader.read(room, since)] == list(range(since + 1, 11)), since


async def follow_until(gen, pred, timeout: float = 20.0) -> list:
    out: list = []
    async with asyncio.timeout(timeout):
        async for item in gen:
            out.append(item)
            if pred(out):
                return out
    return out


async def test_follow_yields_backlog_then_caught_up_then_live(r):
    await write(r, "live", 5)
    reader = RoomReader(r)
    gen = reader.follow("live", since=2, block_ms=100)
    try:
        first = await follow_until(gen, lambda out: isinstance(out[-1], CaughtUp))
        assert [x.seq for x in first[:-1]] == [3, 4, 5]
        assert first[-1] == CaughtUp("live", 5)
        writer = EventWriter(r)
        await writer.start()
        for i in range(5, 12):
            await writer.append(rec("live", i))
        assert await writer.flush(timeout=10)
        await writer.aclose()
        live = await follow_until(gen, lambda out: out[-1] == CaughtUp("live", 12))
        assert [x.seq for x in live if not isinstance(x, CaughtUp)] == list(range(6, 13))
    finally:
        await gen.aclose()


async def test_follow_empty_room_then_live(r):
    reader = RoomReader(r)
    gen = reader.follow("later", block_ms=100)
    try:
        assert await gen.__anext__() == CaughtUp("later", 0)
        await write(r, "later", 2)
        live = await follow_until(gen, lambda out: out[-1] == CaughtUp("later", 2))
        assert [x.seq for x in live if not isinstance(x, CaughtUp)] == [1, 2]
    finally:
        await gen.aclose()


class _AppendAfterBacklog(RoomReader):
    """A reader whose backlog scan is followed, before it looks at the stream's tail, by one more append:
    the window in which a live writer can add entries while ``follow`` switches from reading to XREAD."""

    async def entries(self, room, start="-", *, count=1000):
        async for entry in super().entries(room, start, count=count):
            yield entry
        await write(self._redis, room, 1, start=100)


async def test_follow_misses_nothing_appended_while_switching_to_live(r):
    await write(r, "switch", 3)
    gen = _AppendAfterBacklog(r).follow("switch", block_ms=100)
    try:
        got = await follow_until(gen, lambda out: any(getattr(x, "seq", 0) == 4 for x in out), timeout=5)
    except TimeoutError:
        pytest.fail("follow never delivered the record appended while it switched to live reading")
    finally:
        await gen.aclose()
    assert [x.seq for x in got if not isinstance(x, CaughtUp)] == [1, 2, 3, 4]
