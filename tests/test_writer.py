"""EventWriter and the append script against a real redis-server: order, gaplessness, retries, fencing."""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest

from eventstore.codec import decode_entry, encode_for_append, frame_batch
from eventstore.connection import connect
from eventstore.keys import Keys
from eventstore.reader import RoomReader
from eventstore.records import CallStateUpdated, DataReceived, ParticipantConnected, Record
from eventstore.writer import _APPEND_LUA, EventWriter, WriterClosed
from harness.fixtures import both_redis_url  # noqa: F401 - every test here runs on one server and on a cluster

KEYS = Keys()


@pytest.fixture
async def r(redis_url):
    client = connect(redis_url)
    yield client
    await client.aclose()


def rec(room: str, who: str = "p", n: int = 0, epoch: int = 0) -> Record:
    return ParticipantConnected(room=room, session="s1", ts=1700000000.0 + n, producer=who,
                                participant_id=f"{who}:{n}", epoch=epoch)


async def room_records(r, room: str) -> list[Record]:
    return [decode_entry(fields) for _, fields in await r.xrange(KEYS.events(room))]


def room_keys(room: str) -> list[str]:
    return [KEYS.events(room), KEYS.meta(room), KEYS.lease(room)]


async def test_concurrent_appenders_gapless_and_ordered_per_room(r):
    rooms = [f"room-{i:03d}" for i in range(100)]
    appenders, per_appender = 8, 1250
    writer = EventWriter(r, producer="conc", max_pending=500, max_batch=64)
    await writer.start()

    async def appender(a: int) -> None:
        rnd = random.Random(a)
        for k in range(per_appender):
            await writer.append(rec(rnd.choice(rooms), f"app{a}", k))
            if rnd.random() < 0.05:
                await asyncio.sleep(0)  # interleave with the other appenders and the flusher

    await asyncio.gather(*(appender(a) for a in range(appenders)))
    assert await writer.flush(timeout=60)
    await writer.aclose()
    assert writer.stats.written == appenders * per_appender
    assert writer.stats.duplicates == writer.stats.fenced == 0

    reader = RoomReader(r)
    seen: list[tuple[str, int]] = []
    for room in rooms:
        got = await reader.read(room)
        assert [x.seq for x in got] == list(range(1, len(got) + 1)), room
        assert await reader.last_seq(room) == len(got)
        last: dict[str, int] = {}
        for x in got:
            who, k = x.participant_id.split(":")
            assert int(k) > last.get(who, -1), f"{room}: {who} out of order"
            last[who] = int(k)
            seen.append((who, int(k)))
    assert len(seen) == len(set(seen)) == appenders * per_appender
    assert set(seen) == {(f"app{a}", k) for a in range(appenders) for k in range(per_appender)}
    assert await r.zcard(KEYS.rooms()) == len(rooms)


async def test_retried_batch_is_not_duplicated(r):
    script = r.register_script(_APPEND_LUA)
    items = [encode_for_append(rec("dup", n=n)) for n in range(3)]
    args = [0, -1, "tok-1", 0, frame_batch(items)]
    first = await script(keys=room_keys("dup"), args=args)
    again = await script(keys=room_keys("dup"), args=args)
    assert first[:3] == [b"OK", 1, 3]
    assert again == [b"DUP", 1, 3, first[3]]
    assert await r.xlen(KEYS.events("dup")) == 3
    nxt = await script(keys=room_keys("dup"), args=[0, -1, "tok-2", 0, frame_batch(items[:1])])
    assert nxt[:3] == [b"OK", 4, 4]
    assert [x.seq for x in await room_records(r, "dup")] == [1, 2, 3, 4]


async def test_no_token_means_no_dedup(r):
    script = r.register_script(_APPEND_LUA)
    args = [0, -1, "", 0, frame_batch([encode_for_append(rec("nt"))])]
    assert (await script(keys=room_keys("nt"), args=args))[0] == b"OK"
    assert (await script(keys=room_keys("nt"), args=args))[0] == b"OK"
    assert await r.xlen(KEYS.events("nt")) == 2


async def test_stale_expected_sequence_is_refused(r):
    script = r.register_script(_APPEND_LUA)
    blob = frame_batch([encode_for_append(rec("st", n=n)) for n in range(2)])
    assert (await script(keys=room_keys("st"), args=[0, 0, "a", 0, blob]))[:3] == [b"OK", 1, 2]
    assert await script(keys=room_keys("st"), args=[0, 0, "b", 0, blob]) == [b"STALE", 2]
    assert await script(keys=room_keys("st"), args=[0, 5, "c", 0, blob]) == [b"STALE", 2]
    assert await r.xlen(KEYS.events("st")) == 2
    assert (await script(keys=room_keys("st"), args=[0, 2, "d", 0, blob]))[:3] == [b"OK", 3, 4]


async def test_stale_epoch_is_fenced(r):
    script = r.register_script(_APPEND_LUA)
    blob = frame_batch([encode_for_append(rec("f"))])
    await r.hset(KEYS.lease("f"), mapping={"owner": "other", "epoch": 5})
    assert await script(keys=room_keys("f"), args=[4, -1, "a", 0, blob]) == [b"FENCED", 0, 5]
    assert not await r.exists(KEYS.events("f"))
    assert (await script(keys=room_keys("f"), args=[5, -1, "b", 0, blob]))[:3] == [b"OK", 1, 1]
    assert (await script(keys=room_keys("f"), args=[6, -1, "c", 0, blob]))[:3] == [b"OK", 2, 2]
    assert (await script(keys=room_keys("f"), args=[0, -1, "d", 0, blob]))[:3] == [b"OK", 3, 3]  # unfenced


@pytest.mark.parametrize("mangle", ["bad_head_in_last", "truncated", "empty", "extra_arg"])
async def test_malformed_batch_writes_nothing(r, mangle):
    script = r.register_script(_APPEND_LUA)
    await script(keys=room_keys("m"), args=[0, -1, "t0", 0, frame_batch([encode_for_append(rec("m"))])])
    items = [encode_for_append(rec("m", n=n)) for n in range(3)]
    args: list = [0, -1, "t1", 0]
    if mangle == "bad_head_in_last":
        args.append(frame_batch(items[:2] + [("participant_connected", b'{"seq":0,"type":"x"}', b"")]))
    elif mangle == "truncated":
        args.append(frame_batch(items)[:-5])
    elif mangle == "empty":
        args.append(b"")
    else:
        args += [frame_batch(items), b"surplus"]
    with pytest.raises(Exception, match="append: "):
        await script(keys=room_keys("m"), args=args)
    assert await r.xlen(KEYS.events("m")) == 1
    assert await r.hget(KEYS.meta("m"), "seq") == b"1"


async def test_writer_sends_fenced_records_to_dead_letters(r):
    room = "fenced-room"
    await r.hset(KEYS.lease(room), mapping={"owner": "new-owner", "epoch": 3})
    writer = EventWriter(r, producer="old-owner")
    await writer.start()
    for n in range(4):
        await writer.append(rec(room, "old", n, epoch=2))
    assert await writer.flush(timeout=10)
    for n in range(2):
        await writer.append(rec(room, "new", n, epoch=3))
    assert await writer.flush(timeout=10)
    await writer.aclose()
    assert writer.stats.fenced == 4 and writer.stats.written == 2
    assert [(x.seq, x.epoch) for x in await room_records(r, room)] == [(1, 3), (2, 3)]
    dead = await r.xrange(KEYS.dead())
    assert len(dead) == 4
    for n, (_, fields) in enumerate(dead):
        assert fields[b"room"].decode() == room and fields[b"source"] == b"writer"
        assert fields[b"reason"].startswith(b"fenced")
        t, body, data = msgspec.msgpack.decode(fields[b"fields"])
        assert (t, data) == ("participant_connected", b"")
        assert msgspec.json.decode(body)["participant_id"] == f"old:{n}"


async def test_writer_restarted_with_same_producer_name_is_not_deduplicated(r):
    # A daemon restarts under the same producer name: its batch tokens must not collide with the last batch
    # its earlier run left in the room (that would be taken for a retry and silently dropped).
    for run in range(3):
        writer = EventWriter(r, producer="daemon-1")
        await writer.start()
        await writer.append(rec("restarts", "daemon-1", run))
        assert await writer.flush(timeout=10)
        await writer.aclose()
    assert [x.participant_id for x in await room_records(r, "restarts")] == [f"daemon-1:{n}" for n in range(3)]


async def test_writer_keeps_appending_after_a_foreign_entry(r):
    room = "shared-stream"
    writer = EventWriter(r)
    await writer.start()
    for n in range(3):
        await writer.append(rec(room, n=n))
    assert await writer.flush(timeout=10)
    await r.xadd(KEYS.events(room), {"hello": "world"})
    for n in range(3, 6):
        await writer.append(rec(room, n=n))
    assert await writer.flush(timeout=10)
    await writer.aclose()
    skipped = []

    async def on_bad(bad):
        skipped.append(bad.reason)

    got = await RoomReader(r, on_undecodable=on_bad).read(room)
    assert [x.seq for x in got] == [1, 2, 3, 4, 5, 6]
    assert [x.participant_id for x in got] == [f"p:{n}" for n in range(6)]
    assert len(skipped) == 1 and skipped[0].startswith("missing_field")


async def test_batches_respect_max_batch_and_epoch_changes(r):
    written = []
    writer = EventWriter(r, max_batch=4,
                         on_written=lambda room, n, first, last, age: written.append((n, first, last)))
    for n in range(10):
        await writer.append(rec("mb", n=n, epoch=1 if n < 6 else 2))
    await writer.start()
    assert await writer.flush(timeout=10)
    await writer.aclose()
    assert written == [(4, 1, 4), (2, 5, 6), (4, 7, 10)]
    assert [x.epoch for x in await room_records(r, "mb")] == [1] * 6 + [2] * 4


async def test_mixed_record_types_and_payloads(r):
    writer = EventWriter(r)
    await writer.start()
    sent = [
        CallStateUpdated(room="mix", session="s", ts=1.0, state="joined", previous="joining"),
        DataReceived(room="mix", session="s", ts=2.0, participant_id=None, data=bytes(range(256))),
        DataReceived(room="mix", session="s", ts=3.0, participant_id="u", data="text ✓".encode()),
    ]
    for x in sent:
        await writer.append(x)
    assert await writer.flush(timeout=10)
    await writer.aclose()
    assert await room_records(r, "mix") == [msgspec.structs.replace(x, seq=i) for i, x in enumerate(sent, 1)]


async def test_append_after_close_is_refused(r):
    writer = EventWriter(r)
    await writer.start()
    await writer.aclose()
    await writer.aclose()  # twice is fine
    with pytest.raises(WriterClosed):
        await writer.append(rec("closed"))


async def test_script_reloaded_after_script_flush(r):
    writer = EventWriter(r)
    await writer.start()
    await writer.append(rec("noscript", n=0))
    assert await writer.flush(timeout=10)
    await r.script_flush()
    await writer.append(rec("noscript", n=1))
    assert await writer.flush(timeout=10)
    await writer.aclose()
    assert [x.seq for x in await room_records(r, "noscript")] == [1, 2]
    assert writer.stats.written == 2 and not await r.exists(KEYS.dead())


async def test_seqs_given_again_after_lost_appends_are_recorded(r):
    """Redis lost appends this writer was told were written (a master failing over before its replica had them, a
    restart without persistence) and numbers the next record from where it was: the writer notices a seq at or
    below one it was told before, and records that batch in rs:dead (reason seq_reused) besides writing it."""
    room = "lost appends"
    w = EventWriter(r, producer="told")
    await w.start()
    try:
        for i in range(3):
            await w.append(rec(room, n=i))
        assert await w.flush(10)
        await r.delete(KEYS.events(room), KEYS.meta(room))  # what Redis lost
        await w.append(rec(room, n=3))
        assert await w.flush(10)
        assert w.stats.seq_reused == 1
        dead = await r.xrange(KEYS.dead())
        assert len(dead) == 1
        assert dead[0][1][b"reason"].startswith(b"seq_reused: seqs 1..1 were given before (up to 3)")
        assert [x.seq for x in await room_records(r, room)] == [1]  # written too: the stream is what Redis has
        for n in (4, 5):  # seqs 2 and 3 had been given before too
            await w.append(rec(room, n=n))
            assert await w.flush(10)
        assert w.stats.seq_reused == 3 and await r.xlen(KEYS.dead()) == 3
        await w.append(rec(room, n=6))  # seq 4: past what it was told, nothing more to say
        assert await w.flush(10) and w.stats.seq_reused == 3
    finally:
        await w.aclose()
