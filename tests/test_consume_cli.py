"""``room-supervisor consume``: burst mode, garbage in a room stream, your own projection, and a consumer
process killed with SIGKILL whose unacknowledged work is picked up by the next one.

The CLI is driven through ``supervisor.cli.main`` (sync tests: it runs its own event loop and installs signal
handlers, which needs the main thread) or as a real process; Redis is always a real redis-server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from consumer_support import (
    ORDER_CHECK, SLOW_ORDER_CHECK, assert_materialized_equals_replay, client, interleave, poll, random_rooms, write,
)
from eventstore.consumer import materialized, replay
from eventstore.feed import load_partitions
from eventstore.keys import Keys
from eventstore.projections.callstate import CALL_STATE
from eventstore.projections.participants import PARTICIPANTS
from supervisor.cli import main

REPO = Path(__file__).resolve().parents[1]
KEYS = Keys()


def consume(capsys, url: str, projection: str, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["consume", projection, "--until-caught-up", "--redis-url", url, *extra])
    return code, capsys.readouterr().err


def test_burst_on_an_empty_store_exits_0(redis_url, capsys):
    for name in ("participants", "call-state"):
        code, err = consume(capsys, redis_url, name)
        assert code == 0
        assert f"{name}: applied 0 records" in err


def test_burst_applies_everything_then_nothing(redis_url, capsys):
    rooms = random_rooms(11, rooms=25, per_room=40)
    total = sum(len(r) for r in rooms.values())

    async def setup() -> None:
        redis = client(redis_url)
        try:
            await write(redis, interleave(rooms, 11))
        finally:
            await redis.aclose()

    asyncio.run(setup())
    for name in ("participants", "call-state"):
        code, err = consume(capsys, redis_url, name, "--instance", f"burst-{name}")
        assert (code, f"{name}: applied {total} records" in err) == (0, True)
        code, err = consume(capsys, redis_url, name)
        assert (code, f"{name}: applied 0 records" in err) == (0, True)

    async def check() -> None:
        redis = client(redis_url)
        try:
            await assert_materialized_equals_replay(redis, rooms, (PARTICIPANTS, CALL_STATE))
            assert await redis.exists(KEYS.dead()) == 0
        finally:
            await redis.aclose()

    asyncio.run(check())
    room = next(iter(rooms))
    capsys.readouterr()
    assert main(["state", room, "--check", "--redis-url", redis_url]) == 0


GARBAGE = [
    {b"hello": b"world"},  # not ours at all
    {b"type": b"participant_connected", b"seq": b"3", b"rec": b"{not json"},
    {b"type": b"hologram_joined", b"seq": b"2", b"rec": b'{"type":"hologram_joined","seq":2,"room":"x"}'},
    {b"type": b"participant_connected", b"seq": b"x1", b"rec": b"{}"},
]


def test_garbage_in_a_room_stream_goes_to_dead_letters_and_does_not_stop_the_consumer(redis_url, capsys):
    rooms = random_rooms(12, rooms=4, per_room=30)
    target = next(iter(rooms))
    records = rooms[target]
    foreign: list[bytes] = []

    async def setup() -> None:
        redis = client(redis_url)
        try:
            await write(redis, records[:10])
            for fields in GARBAGE[:2]:  # someone else XADDs into the room's stream
                foreign.append(await redis.xadd(KEYS.events(target), fields))
            await write(redis, records[10:20])
            for fields in GARBAGE[2:]:
                foreign.append(await redis.xadd(KEYS.events(target), fields))
            await write(redis, records[20:] + [r for room, rs in rooms.items() if room != target for r in rs])
        finally:
            await redis.aclose()

    asyncio.run(setup())
    for name in ("participants", "call-state", "eventstore.examples.third_projection:PROJECTION"):
        code, err = consume(capsys, redis_url, name)
        assert code == 0, err

    async def check() -> None:
        redis = client(redis_url)
        try:
            await assert_materialized_equals_replay(redis, rooms, (PARTICIPANTS, CALL_STATE))
            dead = await redis.xrange(KEYS.dead())
            by_source: dict[str, list[bytes]] = {}
            for _, f in dead:
                assert f[b"room"].decode() == target
                by_source.setdefault(f[b"source"].decode(), []).append(f[b"source_id"])
                assert f[b"reason"]
            assert set(by_source) == {"consumer:participants", "consumer:call-state", "consumer:data-topics"}
            for ids in by_source.values():
                assert ids == foreign  # each garbage entry once, in stream order
            reasons = [f[b"reason"].decode().split(":")[0] for _, f in dead[: len(GARBAGE)]]
            assert reasons == ["missing_field", "invalid_json", "unknown_type", "bad_seq"]
            first = msgspec.msgpack.decode(dead[0][1][b"fields"])
            assert first == {"hello": b"world"} or first == {b"hello": b"world"}
        finally:
            await redis.aclose()

    asyncio.run(check())
    capsys.readouterr()
    assert main(["state", target, "--check", "--redis-url", redis_url]) == 0


def test_your_own_projection_by_module_path(redis_url, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    rooms = random_rooms(13, rooms=5, per_room=30)

    async def setup() -> None:
        redis = client(redis_url)
        try:
            await write(redis, interleave(rooms, 13))
        finally:
            await redis.aclose()

    asyncio.run(setup())
    custom = "eventstore.examples.third_projection:PROJECTION"
    code, err = consume(capsys, redis_url, custom)
    assert code == 0 and f"data-topics: applied {sum(len(r) for r in rooms.values())} records" in err
    for room in rooms:
        capsys.readouterr()
        assert main(["state", room, "--projection", custom, "--check", "--redis-url", redis_url]) == 0
        assert capsys.readouterr().out.startswith(f"{custom}: same at seq {len(rooms[room])}")


def test_unknown_projection_is_a_usage_error(redis_url, capsys):
    assert main(["consume", "nope", "--until-caught-up", "--redis-url", redis_url]) == 2
    assert "unknown projection" in capsys.readouterr().err
    assert main(["consume", "json:dumps", "--until-caught-up", "--redis-url", redis_url]) == 2


def test_consumer_process_killed_with_sigkill_is_taken_over(redis_url, capsys, caplog, tmp_path, monkeypatch):
    """A real ``consume`` process dies inside a batch (SIGKILL: no release, no ack). A burst consumer started
    afterwards waits out its leases, reclaims what it read and never acknowledged, and finishes the job."""
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    monkeypatch.setenv("RS_CONSUMER_LEASE_MS", "800")
    monkeypatch.setenv("RS_CONSUMER_BLOCK_MS", "50")
    projection = "consumer_support:SLOW_ORDER_CHECK"  # 2 ms per record: mostly inside a batch
    rooms = random_rooms(14, rooms=20, per_room=30)
    feed = interleave(rooms, 14)
    log = (tmp_path / "victim.log").open("wb")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    victim = subprocess.Popen(
        [sys.executable, "-m", "supervisor.cli", "consume", projection, "--instance", "victim",
         "--redis-url", redis_url], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    group = SLOW_ORDER_CHECK.name

    async def feed_then_kill() -> tuple[int, int]:
        redis = client(redis_url)
        try:
            await load_partitions(redis, KEYS)
            await poll(lambda: redis.exists(KEYS.partition_lock(group, 0)), "the victim owning partitions")
            await poll(lambda: _blocked_in_xreadgroup(redis), "the victim waiting for notifications")
            await write(redis, feed)
            await poll(lambda: _pending(redis, group), "the victim inside a batch")
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
            locks = sum([await redis.exists(KEYS.partition_lock(group, p)) for p in range(16)])
            return await _pending(redis, group), locks
        finally:
            await redis.aclose()

    try:
        pending, locks = asyncio.run(feed_then_kill())
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(timeout=30)
        log.close()
    assert victim.returncode == -signal.SIGKILL
    assert pending > 0 and locks == 16  # it died holding its partitions and a batch it had read

    caplog.set_level(logging.INFO, logger="eventstore")
    code, err = consume(capsys, redis_url, projection, "--instance", "heir")
    assert code == 0, err
    assert "heir: reclaimed" in caplog.text

    async def check() -> None:
        redis = client(redis_url)
        try:
            await assert_materialized_equals_replay(redis, rooms, (SLOW_ORDER_CHECK,))
        finally:
            await redis.aclose()

    asyncio.run(check())


async def _blocked_in_xreadgroup(redis) -> bool:
    return any(c.get("cmd") == "xreadgroup" for c in await redis.client_list())


async def _pending(redis, group: str) -> int:
    total = 0
    for p in range(16):
        try:
            total += int((await redis.xpending(KEYS.feed(p), group))["pending"])
        except Exception:  # the group does not exist yet
            pass
    return total


@pytest.mark.parametrize("projection", ["participants", "call-state"])
def test_order_is_kept_by_the_cli_consumer(redis_url, capsys, projection, monkeypatch):
    """The CLI consumer with a custom order-checking projection: every room's seqs come out 1..n."""
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    rooms = random_rooms(15, rooms=10, per_room=50)

    async def setup() -> None:
        redis = client(redis_url)
        try:
            await write(redis, interleave(rooms, 15))
        finally:
            await redis.aclose()

    asyncio.run(setup())
    for name in (projection, "consumer_support:ORDER_CHECK"):
        code, err = consume(capsys, redis_url, name, "--instance", "one")
        assert code == 0, err

    async def check() -> None:
        redis = client(redis_url)
        try:
            chosen = PARTICIPANTS if projection == "participants" else CALL_STATE
            await assert_materialized_equals_replay(redis, rooms, (chosen, ORDER_CHECK))
        finally:
            await redis.aclose()

    asyncio.run(check())


def test_a_record_from_a_newer_writer_does_not_keep_the_burst_consumer_running(redis_url, capsys):
    """A newer writer appends a type this version does not know (through the real append script, so it takes
    a seq). The consumer passes it over (dead letter) and goes on; --until-caught-up still ends: a room is
    caught up when its checkpoint reached the last entry, not the last seq (that seq is never applied)."""
    from eventstore.codec import frame_batch
    from eventstore.writer import _APPEND_LUA

    rooms = random_rooms(16, rooms=2, per_room=12)
    room = next(iter(rooms))
    records = rooms[room]

    async def append_from_the_future(redis) -> None:
        rec = (b'{"type":"hologram_joined","seq":0,"v":2,"room":' + msgspec.json.encode(room)
               + b',"session":"s9","ts":1.0,"hologram":"h1"}')
        reply = await redis.eval(_APPEND_LUA, 3, KEYS.events(room), KEYS.meta(room), KEYS.lease(room), 0, -1,
                                 "future-1", 0, frame_batch([("hologram_joined", rec, b"")]))
        assert reply[0] == b"OK"

    async def setup(last: bool) -> None:
        redis = client(redis_url)
        try:
            if last:  # the future record is the room's last entry
                await write(redis, records[:6] + [r for r in rooms[next(x for x in rooms if x != room)]])
                await append_from_the_future(redis)
            else:  # ... and then this version's records go on (seq numbers jump over it)
                renumbered = [msgspec.structs.replace(r, seq=0) for r in records[6:]]
                await write(redis, renumbered)
        finally:
            await redis.aclose()

    asyncio.run(setup(last=True))
    for name in ("participants", "call-state"):
        code, err = consume(capsys, redis_url, name)
        assert code == 0, err
    asyncio.run(setup(last=False))
    for name in ("participants", "call-state"):
        code, err = consume(capsys, redis_url, name)
        assert (code, f"{name}: applied {len(records) - 6} records" in err) == (0, True)

    async def check() -> None:
        redis = client(redis_url)
        try:
            for p in (PARTICIPANTS, CALL_STATE):
                state, seq = await materialized(redis, room, p)
                assert seq == len(records) + 1  # the unknown record's seq was passed over, not applied
                assert state == await replay(redis, room, p)
            dead = await redis.xrange(KEYS.dead())
            assert sorted(f[b"source"] for _, f in dead) == [b"consumer:call-state", b"consumer:participants"]
            assert all(f[b"reason"].startswith(b"unknown_type") for _, f in dead)
        finally:
            await redis.aclose()

    asyncio.run(check())
