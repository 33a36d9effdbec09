"""Two real daemons on one Redis never hold the same room at once. LiveKit's own participant lists are the
judge: polled all along, no room ever shows two of our bots, while the daemons share 20 rooms, and while one
drains and the other takes its rooms over."""

from __future__ import annotations

import uuid

import pytest

from daemonproc import BotWatch, DaemonProcess, Observer, observing, run_cli_many, start_in_rooms
from eventstore.records import tag_of
from harness.util import async_wait_until

pytestmark = [pytest.mark.livekit, pytest.mark.slow, pytest.mark.timeout(480)]

ROOMS = 20


async def test_two_daemons_never_hold_the_same_room(tmp_path, redis_url, livekit_server):
    rooms = [f"two-{uuid.uuid4().hex[:6]}-{i}" for i in range(ROOMS)]
    first = DaemonProcess(tmp_path / "a", redis_url, livekit_server.url, daemon_id="daemon-a", max_rooms=12)
    second = DaemonProcess(tmp_path / "b", redis_url, livekit_server.url, daemon_id="daemon-b", max_rooms=ROOMS)
    async with observing(first, second) as observer, BotWatch(observer, rooms) as watch:
        run_cli_many([["join", room] for room in rooms], first.config)

        async def held_by() -> dict[str, str]:
            return {room: view["daemon"] for room, view in (await observer.held_rooms()).items()}

        first.start()  # takes 12 rooms (its max_rooms), then the second starts and takes the other 8
        await async_wait_until(lambda: _count(held_by(), "daemon-a", 12), 120, "daemon-a holds 12 rooms", 0.5)
        second.start()
        await observer.wait_connected(rooms, timeout=180)
        await async_wait_until(lambda: _covers(held_by(), rooms), 60, "every room held")
        owners = await held_by()
        assert sorted(set(owners.values())) == ["daemon-a", "daemon-b"], owners  # both have rooms
        assert list(owners.values()).count("daemon-a") == 12

        # the first daemon drains; the second takes every room over (a fresh session, a new epoch)
        first_rooms = [room for room, owner in owners.items() if owner == "daemon-a"]
        seqs = {room: (await observer.records(room))[-1].seq for room in first_rooms}
        await first.sigterm_exits(0)
        await observer.wait_connected(first_rooms, timeout=120, after=seqs)
        await async_wait_until(lambda: _all_by(held_by(), rooms, "daemon-b"), 60, "daemon-b holds every room")
        bots = await observer.bots_by_room(rooms)
        assert all(len(b) == 1 for b in bots.values()), bots
        for room in first_rooms:
            records = await observer.records(room)
            fresh = [r for r in records if r.seq > seqs[room] and tag_of(r) == "session_started"]
            assert len(fresh) == 1 and fresh[0].epoch > records[0].epoch, fresh

        await watch.stop()
        assert watch.polls > 10
        assert watch.duplicates == [], watch.duplicates[:3]

        await second.sigterm_exits(0)


async def _count(held, daemon: str, n: int) -> bool:
    return list((await held).values()).count(daemon) == n


async def _covers(held, rooms: list[str]) -> bool:
    return set(rooms) <= set(await held)


async def _all_by(held, rooms: list[str], daemon: str) -> bool:
    owners = await held
    return all(owners.get(room) == daemon for room in rooms)


async def test_a_daemon_whose_lease_is_taken_stops_at_once_and_is_fenced(tmp_path, redis_url, livekit_server):
    """Another holder takes a room's lease (written by hand, as a daemon on a partitioned host would): the
    daemon stops that room's bot at once, whatever the session still writes is refused by the fence (dead
    letters), and the daemon takes the room back only after that lease expires (cause ``takeover``)."""
    rooms = [f"fence-{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
    stolen, kept = rooms
    daemon = DaemonProcess(tmp_path, redis_url, livekit_server.url)
    async with observing(daemon) as observer:
        await start_in_rooms(daemon, observer, rooms, timeout=120)
        lease = observer.keys.lease(stolen)
        epoch = int(await observer.redis.hget(lease, "epoch")) + 1
        seconds, micros = await observer.redis.time()
        expires = seconds * 1000 + micros // 1000 + 8000
        await observer.redis.hset(lease, mapping={"owner": "intruder/1", "epoch": epoch, "expires": expires})
        seq = (await observer.records(stolen))[-1].seq

        await async_wait_until(lambda: _no_bots(observer, stolen), 30, "the bot of the stolen room to leave")
        await async_wait_until(lambda: _fenced(observer, stolen), 30, "the old session's last records fenced")
        assert [r for r in await observer.records(stolen) if r.seq > seq and r.epoch < epoch] == []

        await observer.wait_connected([stolen], timeout=60, after={stolen: seq})
        back = [r for r in await observer.records(stolen) if r.seq > seq and tag_of(r) == "session_started"]
        assert len(back) == 1 and back[0].cause == "takeover" and back[0].epoch == epoch + 1, back
        assert (await observer.types(kept)).count("session_started") == 1  # the other room never noticed
        await daemon.sigterm_exits(0)


async def _fenced(observer: Observer, room: str) -> bool:
    dead = await observer.redis.xrange(observer.keys.dead())
    return any(f[b"room"] == room.encode() and f[b"reason"].startswith(b"fenced") for _, f in dead)


async def _no_bots(observer: Observer, room: str) -> bool:
    return await observer.bots(room) == []


async def test_drain_and_takeover_ten_times_never_shows_two_bots(tmp_path, redis_url, livekit_server):
    """Two daemons, 20 rooms: the one holding them drains (SIGTERM), the other takes every room over, the drained
    one starts again (idle), and so on, 10 times. LiveKit never lists two of our bots in a room (polled every
    200 ms), and when a drained daemon has exited 0, none of its bots is listed any more."""
    rooms = [f"relay-{uuid.uuid4().hex[:6]}-{i}" for i in range(ROOMS)]
    daemons = [DaemonProcess(tmp_path / name, redis_url, livekit_server.url, daemon_id=f"relay-{name}",
                             max_rooms=ROOMS) for name in ("a", "b")]
    async with observing(*daemons) as observer, BotWatch(observer, rooms) as watch:
        run_cli_many([["join", room] for room in rooms], daemons[0].config)
        holder, idle = daemons
        holder.start()
        await observer.wait_connected(rooms, timeout=180)
        idle.start()
        for _ in range(10):
            seqs = {room: (await observer.records(room))[-1].seq for room in rooms}
            await holder.sigterm_exits(0)
            theirs = await _identities_of(observer, rooms, holder.id)
            listed = {b for bots in (await observer.bots_by_room(rooms)).values() for b in bots}
            assert not theirs & listed, (holder.id, sorted(theirs & listed))  # gone before the exit
            await observer.wait_connected(rooms, timeout=120, after=seqs)
            holder.start()  # back, idle: the next to take over
            holder, idle = idle, holder
        await async_wait_until(lambda: observer.ready(idle.id), 60, "the restarted daemon to be ready", 0.2)
        await watch.stop()
        assert watch.polls > 50 and watch.duplicates == [], watch.duplicates[:3]
        for daemon in daemons:
            await daemon.sigterm_exits(0)


async def _identities_of(observer: Observer, rooms: list[str], daemon_id: str) -> set[str]:
    identities = set()
    for room in rooms:
        identities |= {r.identity for r in await observer.records(room)
                       if tag_of(r) == "session_started" and r.producer == daemon_id}
    return identities
