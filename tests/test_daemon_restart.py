"""A restarted daemon takes its own rooms back at once, and an idle daemon costs Redis little.

- kill -9 of a daemon holding 50 rooms (``listen``), then a restart with the same id: it takes every lease
  back without waiting for it to expire (a new epoch), removes its earlier bots, and every room has exactly one
  bot, a new one. The time from the restart to that state is printed (not asserted: CI machines are busy).
- Two daemons with the same id: the second waits while the first is alive (its heartbeat, on this host, names
  a live process), and starts once the first is gone.
- An idle daemon beside 1,000 desired rooms that another daemon holds sends a bounded number of Redis commands
  a second (counted with ``MONITOR``), and still takes a room over when its holder stops renewing it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter

import pytest

from daemonproc import DaemonProcess, Observer, observing, start_in_rooms
from eventstore.records import tag_of
from harness.util import async_wait_until
from supervisor.heartbeat import read_heartbeats

pytestmark = [pytest.mark.livekit, pytest.mark.slow, pytest.mark.timeout(600)]


async def test_a_restarted_daemon_takes_its_rooms_back_at_once(tmp_path, redis_url, livekit_server):
    rooms = [f"back-{uuid.uuid4().hex[:6]}-{i}" for i in range(50)]
    daemon = DaemonProcess(tmp_path, redis_url, livekit_server.url, lease_ttl=10.0)
    async with observing(daemon, log_lines=150) as observer:
        await start_in_rooms(daemon, observer, rooms, pipeline="listen", timeout=300)
        before = await observer.bots_by_room(rooms)
        assert all(len(b) == 1 for b in before.values()), before
        old = {b for bots in before.values() for b in bots}
        seqs = {room: (await observer.records(room))[-1].seq for room in rooms}

        daemon.kill9()
        started = time.monotonic()
        daemon.start()
        await async_wait_until(lambda: _one_new_bot_each(observer, rooms, old), 120, "one new bot in every room",
                               0.2)
        print(f"\nkill -9 + restart with 50 rooms: every room had one new bot {time.monotonic() - started:.1f}s "
              "after the restart")
        for room in rooms:
            fresh = [r for r in await observer.records(room) if r.seq > seqs[room] and tag_of(r) == "session_started"]
            assert len(fresh) == 1 and fresh[0].cause == "takeover", (room, fresh)
        await daemon.sigterm_exits(0)


async def _one_new_bot_each(observer: Observer, rooms: list[str], old: set[str]) -> bool:
    bots = await observer.bots_by_room(rooms)
    return all(len(b) == 1 and b[0] not in old for b in bots.values())


async def test_a_second_daemon_with_the_same_id_waits_for_the_first(tmp_path, redis_url, livekit_server):
    room = f"twin-{uuid.uuid4().hex[:6]}"
    first = DaemonProcess(tmp_path / "first", redis_url, livekit_server.url, daemon_id="twin")
    second = DaemonProcess(tmp_path / "second", redis_url, livekit_server.url, daemon_id="twin")  # own spool dir
    async with observing(first, second) as observer:
        await start_in_rooms(first, observer, [room], timeout=120)
        second.start()
        await async_wait_until(lambda: "another daemon with id 'twin' runs on this host" in second.log_tail(), 60,
                               "the second daemon to say why it waits", 0.3)
        beats = await read_heartbeats(observer.redis, observer.keys)
        assert [b.pid for b in beats] == [first.proc.pid]  # the first one's heartbeat stands
        assert (await observer.types(room)).count("session_started") == 1  # nothing was taken from the first
        await first.sigterm_exits(0)
        seq = (await observer.records(room))[-1].seq
        await observer.wait_connected([room], timeout=120, after={room: seq})  # then the second takes over
        await second.sigterm_exits(0)


async def test_an_idle_daemon_costs_few_commands_and_still_takes_over(tmp_path, redis_url, livekit_server):
    """The holder of 1,000 rooms is played by this test; the daemon's own commands are told apart by its
    connections' client name (``CLIENT LIST``) in ``MONITOR``."""
    rooms = [f"busy-{i:04d}" for i in range(1000)]
    daemon = DaemonProcess(tmp_path, redis_url, livekit_server.url, lease_ttl=3.0)
    async with observing(daemon) as observer:
        redis = observer.redis
        now = time.time()
        await redis.hset(observer.keys.desired(), mapping={
            r: json.dumps({"pipeline": "listen", "since": now}) for r in rooms})
        holder = _Holder(observer, rooms, ttl_ms=3000)
        keeper = asyncio.get_running_loop().create_task(holder.keep())
        try:
            await async_wait_until(lambda: holder.rounds > 0, 30, "the holder's first round", 0.1)
            daemon.start()
            await async_wait_until(lambda: observer.ready(daemon.id), 60, "the idle daemon's heartbeat", 0.3)
            # past its start-up reads: its first reconcile pass (a full read of desired state) is done
            await async_wait_until(lambda: _read_once(daemon), 60, "the daemon's first full read", 0.3)
            seconds = 10.0
            commands = await _commands_of(redis, f"room-supervisor:{daemon.id}", seconds)
            rate = sum(commands.values()) / seconds
            print(f"\nidle daemon beside 1,000 held rooms: {rate:.1f} Redis commands/s {dict(commands)}")
            assert 0 < rate <= 20, commands
            assert (await redis.hget(observer.keys.lease(rooms[1]), "owner")) == b"holder/1"

            holder.rooms.discard(rooms[0])  # its holder dies: no more renewals for this room
            dropped = time.monotonic()
            await async_wait_until(lambda: _owned_by(observer, rooms[0], daemon.id), 30, "the takeover", 0.1)
            print(f"takeover {time.monotonic() - dropped:.1f}s after the last renewal (lease TTL 3 s)")
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        await observer.wait_connected([rooms[0]], timeout=120)
        await daemon.sigterm_exits(0)


_HOLD = """
local t = redis.call('TIME')
local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, 'owner', 'holder/1', 'epoch', 1, 'expires', expires)
  redis.call('ZADD', ARGV[2], expires, ARGV[i + 2])
end
return expires
"""


class _Holder:
    """Another daemon that holds rooms: it renews their leases and index entries every second."""

    def __init__(self, observer: Observer, rooms: list[str], ttl_ms: int) -> None:
        self.observer, self.rooms, self.ttl_ms = observer, set(rooms), ttl_ms
        self.rounds = 0

    async def renew(self, rooms) -> None:
        keys = self.observer.keys
        rooms = sorted(rooms)
        for i in range(0, len(rooms), 200):
            chunk = rooms[i:i + 200]
            await self.observer.redis.eval(_HOLD, len(chunk), *(keys.lease(r) for r in chunk), self.ttl_ms,
                                           keys.claimable(), *chunk)

    async def keep(self) -> None:
        while True:
            await self.renew(self.rooms)
            self.rounds += 1
            await asyncio.sleep(1.0)


async def _commands_of(redis, client_name: str, seconds: float) -> Counter[str]:
    """The top-level commands that connections named ``client_name`` send within ``seconds`` (MONITOR; a
    script's own calls are not counted)."""
    counts: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    async with redis.monitor() as monitor:
        listen = monitor.listen().__aiter__()
        seen: list[dict] = []
        while (left := end - loop.time()) > 0:
            try:
                seen.append(await asyncio.wait_for(listen.__anext__(), left))
            except asyncio.TimeoutError:
                break
    addrs = {c["addr"] for c in await redis.client_list() if c.get("name") == client_name}
    for item in seen:
        if f"{item.get('client_address')}:{item.get('client_port')}" in addrs:
            counts[item["command"].split()[0].lower()] += 1
    return counts


async def _owned_by(observer: Observer, room: str, daemon_id: str) -> bool:
    owner = await observer.redis.hget(observer.keys.lease(room), "owner")
    return owner is not None and owner.decode().startswith(daemon_id + "/")



async def _read_once(daemon: DaemonProcess) -> bool:
    return await daemon.full_reads() >= 1
