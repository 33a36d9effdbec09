"""Replaying a spool: a room drains in batches (a window is one batch per room per round trip), and a writer that
dies mid-replay leaves a spool the next writer finishes with every record exactly once, in order, seq gapless."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eventstore.codec import decode_entry, encode_for_append
from eventstore.connection import connect
from eventstore.keys import Keys
from eventstore.records import ParticipantConnected
from eventstore.spool import Spool, SpoolUnit
from eventstore.writer import _APPEND_LUA, EventWriter

KEYS = Keys()
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def rec(room: str, n: int, epoch: int = 0) -> ParticipantConnected:
    return ParticipantConnected(room=room, session="s", ts=float(n), participant_id=f"{room}/{n}", epoch=epoch)


async def room_ids(r, room: str) -> list[str]:
    got = [decode_entry(fields) for _, fields in await r.xrange(KEYS.events(room))]
    assert [x.seq for x in got] == list(range(1, len(got) + 1)), room
    assert await r.hget(KEYS.meta(room), "seq") == str(len(got)).encode()
    return [x.participant_id for x in got]


async def evalsha_calls(r) -> int:
    return int((await r.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_thousand_spooled_records_of_one_room_take_few_round_trips(fresh_redis, tmp_path):
    r = connect(fresh_redis.url, socket_timeout=2.0, connect_timeout=1.0)
    try:
        fresh_redis.kill()
        writer = EventWriter(r, spool=Spool(tmp_path / "w.spool"), max_pending=10, max_block=0.0)
        await writer.start()
        for n in range(1000):
            await writer.append(rec("one", n))
        assert writer.pending == 0 and writer.stats.spooled == 1000
        fresh_redis.start()  # an empty server (the earlier one had nothing): commandstats from zero
        assert await writer.flush(timeout=60)
        await writer.aclose()
        assert await room_ids(r, "one") == [f"one/{n}" for n in range(1000)]
        calls = await evalsha_calls(r)
        print(f"\n1000 spooled records: {calls} EVALSHA calls, {writer.stats.round_trips} round trips")
        assert calls <= 10 and writer.stats.round_trips <= 10
    finally:
        await r.aclose()


# A writer that dies like kill -9 at its n-th round trip: before sending it (the window is persisted, not sent),
# or after Redis answered (the window is in Redis, the spool does not know yet).
CHILD = textwrap.dedent("""
    import asyncio, os, sys
    from eventstore.connection import connect
    from eventstore.spool import Spool
    from eventstore.writer import EventWriter

    url, path, crash_at, when, max_batch = sys.argv[1:]

    class Dies(EventWriter):
        async def _send(self, batches):
            if when == "before_send" and self.stats.round_trips + 1 == int(crash_at):
                os._exit(9)
            replies = await super()._send(batches)
            if when == "after_send" and self.stats.round_trips == int(crash_at):
                os._exit(9)
            return replies

    async def main():
        writer = Dies(connect(url), spool=await Spool.open(path), max_batch=int(max_batch))
        await writer.start()
        await writer.flush(60)
        sys.exit("the writer finished before its crash")

    asyncio.run(main())
""")


def build_units() -> tuple[list[SpoolUnit], dict[str, list[str]]]:
    """Three rooms' units of one to five records, with an epoch change and a unit marked sent in each room."""
    units, expected = [], {room: [] for room in ("a", "b", "c")}
    n = 0
    for i in range(240):
        room = "abc"[i % 3]
        size = 1 + i % 5
        epoch = 1 if i < 150 else 2
        records = [rec(room, n + k, epoch) for k in range(size)]
        n += size
        units.append(SpoolUnit(room, f"tok-{i}", epoch, [encode_for_append(x) for x in records], sent=i % 37 == 5))
        expected[room] += [x.participant_id for x in records]
    return units, expected


def run_child(url: str, path: Path, crash_at: int, when: str, max_batch: int) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD, url, str(path), str(crash_at), when, str(max_batch)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr[-2000:]


@pytest.mark.parametrize("crashes", [[(1, "after_send")], [(4, "after_send"), (2, "after_send")],
                                     [(3, "before_send")], [(2, "before_send"), (3, "after_send")]])
async def test_a_writer_killed_mid_replay_leaves_a_spool_the_next_writes_exactly_once(redis_url, tmp_path, crashes):
    path = tmp_path / "w.spool"
    units, expected = build_units()
    spool = Spool(path)
    await spool.append(*units)
    await spool.aclose()
    r = connect(redis_url)
    try:
        await r.script_load(_APPEND_LUA)
        for crash_at, when in crashes:
            await asyncio.to_thread(run_child, redis_url, path, crash_at, when, 12)
        written = [len(await room_ids(r, room)) for room in expected]
        assert 0 < sum(written) < sum(map(len, expected.values()))  # the crashes came mid-replay
        writer = EventWriter(r, spool=await Spool.open(path), max_batch=256)  # another bound: same windows
        await writer.start()
        assert await writer.flush(timeout=60)
        await writer.aclose()
        for room, ids in expected.items():
            assert await room_ids(r, room) == ids, room
        assert not await r.exists(KEYS.dead())
        assert writer.stats.duplicates > 0 or crashes[-1][1] == "before_send"  # the re-sent window: recognized
        left = Spool(path)
        assert left.empty
        left.close()
    finally:
        await r.aclose()
