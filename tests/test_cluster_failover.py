"""The event log on a real Redis Cluster (3 masters, 3 replicas) through a master failover.

A master is killed with SIGKILL in the middle of a burst of 8 writers over 100 rooms with ``wait_replicas = 1``,
and restarted after its replica was promoted (it comes back as that replica's replica): every record the writers
were told is written is in its room's stream exactly once and in order, each room's seqs are gapless, no seq was
given twice (no ``seq_reused``), nothing went to dead letters, and the consumers' states equal a replay from zero.
WAIT is checked to run on the connection that sent the appends: with a replica frozen, an append is not confirmed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from consumer_support import assert_materialized_equals_replay, catch_up
from eventstore.connection import connect
from eventstore.keys import Keys
from eventstore.reader import RoomReader
from eventstore.records import DataReceived
from eventstore.writer import EventWriter
from eventstore.projections.callstate import CALL_STATE
from eventstore.projections.participants import PARTICIPANTS
from harness.util import async_wait_until

pytestmark = [pytest.mark.timeout(300)]

WRITERS = 8
ROOMS = 100
PER_ROOM = 60


@pytest.fixture
def cluster(private_cluster):
    return private_cluster


def record(room: str, writer: int, n: int) -> DataReceived:
    return DataReceived(room=room, session="s", ts=1.0 + n, participant_id=f"w{writer}",
                        data=f"{room}|{writer}|{n}".encode(), topic="t")


async def write_rooms(url: str, writer: int, rooms: list[str], started: asyncio.Event) -> EventWriter:
    """Append PER_ROOM records to each of ``rooms``, a few at a time, flushing as the daemon's writer does."""
    redis = connect(url)
    w = EventWriter(redis, producer=f"writer-{writer}", wait_replicas=1, wait_timeout=0.5, max_batch=16)
    await w.start()
    try:
        for n in range(PER_ROOM):
            for room in rooms:
                await w.append(record(room, writer, n))
            if n == 5:
                started.set()
            await asyncio.sleep(0.01)
        assert await w.flush(120), f"writer {writer}: not everything was confirmed"
    finally:
        await w.aclose()
        await redis.aclose()
    return w


async def test_a_master_killed_mid_burst_loses_and_repeats_nothing(cluster):
    rooms = [f"fo {i}/ü" for i in range(ROOMS)]
    mine = {w: rooms[w::WRITERS] for w in range(WRITERS)}
    started = asyncio.Event()
    tasks = [asyncio.create_task(write_rooms(cluster.url, w, mine[w], started)) for w in range(WRITERS)]
    await asyncio.wait_for(started.wait(), 60)
    victim = cluster.master_of(Keys().events(rooms[0]))
    took = await asyncio.to_thread(cluster.kill_master, victim)
    print(f"\nmaster {victim.port} killed; a replica was promoted in {took:.1f} s")
    # The promoted master has no replica until the old one comes back (as its replica, as a restarted node
    # does): until then its appends cannot be confirmed, and its writers keep them.
    await asyncio.sleep(1)
    await asyncio.to_thread(cluster.rejoin, victim)
    writers = await asyncio.gather(*tasks)

    redis = connect(cluster.url)
    try:
        reader = RoomReader(redis)
        for w, rooms_of_w in mine.items():
            for room in rooms_of_w:
                got = await reader.read(room)
                assert [r.seq for r in got] == list(range(1, PER_ROOM + 1)), room
                assert [r.data for r in got] == [f"{room}|{w}|{n}".encode() for n in range(PER_ROOM)], room
        assert sum(w.stats.seq_reused for w in writers) == 0
        assert sum(w.stats.written + w.stats.duplicates for w in writers) == ROOMS * PER_ROOM
        assert await redis.xlen(Keys().dead()) == 0
        print(f"unconfirmed round trips, sent again: {sum(w.stats.unreplicated for w in writers)}; "
              f"batches recognized as already written: {sum(w.stats.duplicates for w in writers)} records")
        for p in (PARTICIPANTS, CALL_STATE):
            await catch_up(redis, p)
        expected = {room: await reader.read(room) for room in rooms}
        await assert_materialized_equals_replay(redis, expected, (PARTICIPANTS, CALL_STATE))
    finally:
        await redis.aclose()


async def test_an_append_is_not_confirmed_while_the_replica_does_not_take_it(cluster):
    """WAIT runs where the appends ran: with the replica of the room's master frozen, the writer keeps the record
    (unconfirmed, sent again) and confirms it once the replica is back."""
    room = "frozen replica"
    master = cluster.master_of(Keys().events(room))
    replica = next(n for n in cluster.nodes if n.role() == "slave" and cluster.replica_of(n) == master)
    redis = connect(cluster.url)
    w = EventWriter(redis, producer="frozen", wait_replicas=1, wait_timeout=0.2)
    await w.start()
    try:
        os.kill(replica.proc.pid, signal.SIGSTOP)
        try:
            await w.append(record(room, 0, 0))
            await async_wait_until(lambda: w.stats.unreplicated >= 2, 30, "two unconfirmed round trips")
            assert not await w.flush(0.1)
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
        started = time.monotonic()
        assert await w.flush(30)
        print(f"\nconfirmed {time.monotonic() - started:.2f} s after the replica came back")
        got = await RoomReader(redis).read(room)
        assert [r.seq for r in got] == [1]  # sent several times, written once
    finally:
        await w.aclose()
        await redis.aclose()
