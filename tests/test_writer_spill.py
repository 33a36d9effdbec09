"""EventWriter spills to the spool all or nothing, so a room's records never end up split between memory and spool
in the wrong order (the flusher drains memory first, then the spool)."""

from __future__ import annotations

import msgspec
import pytest

from eventstore.codec import decode_entry, encode_for_append
from eventstore.keys import Keys
from eventstore.records import ParticipantConnected
from eventstore.spool import Spool, SpoolError, SpoolUnit
from eventstore.writer import EventWriter
from harness.util import async_wait_until

KEYS = Keys()
pytestmark = pytest.mark.slow


def rec(room: str, n: int) -> ParticipantConnected:
    return ParticipantConnected(room=room, session="s", ts=float(n), participant_id=f"{room}/{n}")


def frame_size(records: int) -> int:
    """Bytes one spool frame takes for a unit of ``records`` records like ``rec`` makes (token as the writer's)."""
    unit = SpoolUnit("a", "p:0123abcd:99", 0, [encode_for_append(rec("a", n)) for n in range(records)])
    return 8 + len(msgspec.msgpack.encode(unit))


async def room_ids(r, room: str) -> list[str]:
    got = [decode_entry(fields) for _, fields in await r.xrange(KEYS.events(room))]
    assert [x.seq for x in got] == list(range(1, len(got) + 1)), room
    return [x.participant_id for x in got]


async def test_a_spill_that_does_not_fit_keeps_every_room_in_order(fresh_redis, tmp_path, clients):
    """The spool has room for one batch but memory holds four: a spill that stopped part-way would leave room
    a's oldest batch in the spool and its next batch in memory, which the flusher sends first."""
    r = clients(fresh_redis.url, socket_timeout=1.0)
    fresh_redis.kill()
    spool = Spool(tmp_path / "w.spool", max_bytes=frame_size(5) * 3 // 2)
    writer = EventWriter(r, producer="p", spool=spool, max_pending=20, max_batch=5, max_block=0.0)
    await writer.start()
    rooms = ["a", "b"]
    kept: dict[str, list[str]] = {room: [] for room in rooms}
    refused = 0
    for n in range(40):
        record = rec(rooms[n % 2], n)
        try:
            await writer.append(record)
        except SpoolError:
            refused += 1  # memory is full and the spool cannot take it: the caller is told
            continue
        kept[record.room].append(record.participant_id)
    assert refused > 0
    fresh_redis.start()
    assert await writer.flush(timeout=30)
    await writer.aclose()
    for room in rooms:
        assert await room_ids(r, room) == kept[room], room
    assert not await r.exists(KEYS.dead())


def _paused_append(client: dict) -> bool:
    return "b" in client.get("flags", "") and client.get("cmd") == "evalsha"


async def test_a_batch_spilled_while_redis_runs_it_is_written_once(fresh_redis, tmp_path, clients):
    """Redis holds a batch (CLIENT PAUSE WRITE) while the queue fills and spills it to the spool, then runs it.
    The spool replays that batch alone, with its token, so the append script recognizes it as done; merged with
    the records after it, under another token, it would be written twice."""
    r = clients(fresh_redis.url, socket_timeout=60.0)
    admin = clients(fresh_redis.url)
    writer = EventWriter(r, producer="p", spool=Spool(tmp_path / "w.spool"), max_pending=6, max_batch=50,
                         max_block=0.0)
    await writer.start()
    kept = []

    async def append(n: int) -> None:
        await writer.append(rec("a", n))
        kept.append(f"a/{n}")

    await append(0)
    assert await writer.flush(timeout=10)
    await admin.client_pause(60_000, all=False)  # WRITE: the append script waits, unanswered
    try:
        for n in range(1, 4):
            await append(n)
        await _wait_for(admin, _paused_append, "the writer's batch held by the pause")
        for n in range(4, 12):
            await append(n)  # fills the queue: the held batch and the rest go to the spool
        assert writer.spooled_bytes > 0 and writer.pending == 0
    finally:
        await admin.client_unpause()
    assert await writer.flush(timeout=30)
    await writer.aclose()
    assert await room_ids(r, "a") == kept
    assert writer.stats.duplicates == 3  # the held batch, replayed from the spool and recognized
    assert not await r.exists(KEYS.dead())


async def _wait_for(admin, predicate, what: str) -> None:
    async def seen() -> bool:
        return any(predicate(c) for c in await admin.client_list())

    await async_wait_until(seen, 10, what)
