"""Helpers shared by the consumer tests: write records through the real writer, run runners, compare states.

Everything here talks to a real redis-server (the ``redis_url`` / ``fresh_redis`` fixtures); nothing is mocked.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis

from eventstore.connection import connect
from eventstore.consumer import ProjectionRunner, materialized, replay
from eventstore.keys import Keys
from eventstore.projections.base import Projection, fold
from eventstore.records import Record
from eventstore.writer import EventWriter
from supervisor.devstack.util import async_wait_until

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # examples/ lives at the repository root, next to the packages
    sys.path.insert(0, str(REPO))

T = TypeVar("T")
DEADLINE = 30.0


class SeqLog(msgspec.Struct, frozen=True):
    """State of :class:`OrderCheck`: every sequence number applied to the room, in the order applied."""

    room: str
    seqs: tuple[int, ...] = ()


class OrderCheck:
    """A projection that records the seqs it is given. A correct runner makes it ``(1, 2, ..., n)``: no event
    applied twice, none skipped, none reordered (its saved state is the only thing that survives)."""

    name = "order-check"
    state_type = SeqLog

    def initial(self, room: str) -> SeqLog:
        return SeqLog(room)

    def apply(self, state: SeqLog, record: Record) -> SeqLog:
        return SeqLog(state.room, state.seqs + (record.seq,))


ORDER_CHECK = OrderCheck()


class SlowOrderCheck(OrderCheck):
    """:class:`OrderCheck` taking 2 ms per record (a heavy reducer): a consumer spends most of its time inside
    a batch, read and not yet acknowledged, which is where a test wants to kill it."""

    name = "order-check-slow"

    def apply(self, state: SeqLog, record: Record) -> SeqLog:
        time.sleep(0.002)
        return super().apply(state, record)


SLOW_ORDER_CHECK = SlowOrderCheck()


async def poll(predicate: Callable[[], Awaitable[T] | T], what: str, timeout: float = DEADLINE,
               interval: float = 0.01) -> T:
    """Poll ``predicate`` (sync or async) until truthy; fail after ``timeout`` seconds."""
    return await async_wait_until(predicate, timeout, what, interval)


async def write(redis: aioredis.Redis, records: Iterable[Record], *, keys: Keys | None = None) -> None:
    """Append ``records`` through a real EventWriter and wait until all are in Redis."""
    writer = EventWriter(redis, keys=keys, producer="test")
    await writer.start()
    try:
        for record in records:
            await writer.append(record)
        assert await writer.flush(timeout=DEADLINE), "writer did not flush"
    finally:
        await writer.aclose()
    assert writer.stats.written == writer.stats.appended, writer.stats


def by_room(records: Iterable[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for r in records:
        out.setdefault(r.room, []).append(r)
    return out


async def catch_up(redis: aioredis.Redis, projection: Projection[Any], *, keys: Keys | None = None,
                   **opts: Any) -> int:
    """One runner in burst mode (``until_caught_up``). Returns the records it applied."""
    runner = ProjectionRunner(redis, projection, keys=keys, **opts)
    return await runner.run(until_caught_up=True)


async def last_seq(redis: aioredis.Redis, room: str, keys: Keys | None = None) -> int:
    raw = await redis.hget((keys or Keys()).meta(room), "seq")
    return int(raw or 0)


async def all_caught_up(redis: aioredis.Redis, rooms: Iterable[str], projections: Sequence[Projection[Any]],
                        keys: Keys | None = None) -> bool:
    keys = keys or Keys()
    for room in rooms:
        target = await last_seq(redis, room, keys)
        for p in projections:
            raw = await redis.hget(keys.state(room, p.name), "seq")
            if int(raw or 0) != target:
                return False
    return True


async def assert_materialized_equals_replay(redis: aioredis.Redis, expected: dict[str, list[Record]],
                                            projections: Sequence[Projection[Any]],
                                            keys: Keys | None = None) -> None:
    """For every room and projection: materialized state == replay() == fold over the records in memory,
    and the checkpoint is the room's last seq."""
    for room, records in expected.items():
        for p in projections:
            state, seq = await materialized(redis, room, p, keys=keys)
            replayed = await replay(redis, room, p, keys=keys)
            in_memory = fold(p, room, records)
            assert seq == len(records), (room, p.name, seq, len(records))
            assert state == replayed, (room, p.name)
            assert replayed == in_memory, (room, p.name)
            # byte-identical too (the CLI's --check compares encodings)
            assert msgspec.json.encode(state) == msgspec.json.encode(replayed)
        if any(p is ORDER_CHECK for p in projections):
            state, _ = await materialized(redis, room, ORDER_CHECK, keys=keys)
            assert state.seqs == tuple(range(1, len(records) + 1)), (room, state.seqs)


async def stop_runner(runner: ProjectionRunner[Any], task: asyncio.Task[int]) -> int:
    runner.stop()
    return await asyncio.wait_for(task, DEADLINE)


async def cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` (a crash, as far as its Redis state is concerned) and wait for it to end."""
    task.cancel()
    try:
        await asyncio.wait_for(task, DEADLINE)
    except asyncio.CancelledError:
        pass


def client(url: str) -> aioredis.Redis:
    return connect(url)


def random_history(rng: random.Random, room: str, n: int) -> list[Record]:
    """About ``n`` plausible records for ``room`` (seeded): sessions, people coming and going, tracks, data,
    reconnects. Deterministic for a given ``rng`` state; cheap enough for thousands of records."""
    from strategies import Script

    from eventstore.records import (
        AudioTrackSubscribed, AudioTrackUnsubscribed, Connected, DataReceived, Disconnected,
        ParticipantConnected, ParticipantDisconnected, ParticipantLeft, Reconnected, Reconnecting, SessionEnded,
        SessionStarted,
    )

    s = Script(room, step=0.25)
    present: dict[str, list[str]] = {}  # identity -> audio tracks
    bot_in = False
    sessions = 0
    names = ("alice", "bob", "carol", "dave")
    while len(s.records) < n:
        if not bot_in:
            sessions += 1
            s(SessionStarted, identity="bot", cause="join" if sessions == 1 else "rejoin",
              session=f"{room}#{sessions}")
            s(Connected, identity="bot", participants=sorted(present))
            bot_in = True
            continue
        x = rng.random()
        absent = [p for p in names if p not in present]
        if x < 0.25 and absent:
            who = rng.choice(absent)
            present[who] = []
            s(ParticipantConnected, participant_id=who, participant_sid=f"PA_{who}_{s.seq}")
        elif x < 0.4 and present:
            who = rng.choice(sorted(present))
            for track in present.pop(who):
                s(AudioTrackUnsubscribed, participant_id=who, track_sid=track)
            s(ParticipantDisconnected, participant_id=who, reason="CLIENT_INITIATED")
            s(ParticipantLeft, participant_id=who, disconnect_reason="CLIENT_INITIATED")
        elif x < 0.75:
            who = rng.choice(sorted(present)) if present and rng.random() < 0.8 else None
            s(DataReceived, participant_id=who, data=rng.randbytes(rng.randrange(0, 40)),
              topic=rng.choice(("chat", "ops")))
        elif x < 0.88 and present:
            who = rng.choice(sorted(present))
            track = f"TR_{s.seq}"
            present[who].append(track)
            s(AudioTrackSubscribed, participant_id=who, track_sid=track)
        elif x < 0.95:
            s(Reconnecting)
            s(Reconnected, participants=sorted(present))
        else:
            s(Disconnected, reason="SIGNAL_CLOSE")
            s(SessionEnded, reason="connection_lost", rejoin=True)
            for tracks in present.values():
                tracks.clear()
            bot_in = False
    return s.records


def random_rooms(seed: int, rooms: int, per_room: int, prefix: str = "room") -> dict[str, list[Record]]:

    rng = random.Random(seed)
    return {f"{prefix} {i}/ü": random_history(rng, f"{prefix} {i}/ü", per_room) for i in range(rooms)}


def interleave(histories: dict[str, list[Record]], seed: int) -> list[Record]:
    """All records, rooms mixed at random, each room's order kept."""

    rng = random.Random(seed)
    queues = {room: list(reversed(records)) for room, records in histories.items() if records}
    out: list[Record] = []
    while queues:
        room = rng.choice(sorted(queues))
        out.append(queues[room].pop())
        if not queues[room]:
            del queues[room]
    return out
