"""Step 10: admission by load. The load a daemon measures (event-loop CPU and lag) and the number of rooms it
then takes are checked as pure functions; two real daemons show that a daemon over its threshold leaves due
rooms to another (they stay desired), takes rooms again once its threshold allows, shows its load in its
heartbeat, ``/metrics`` and ``room-supervisor rooms``, and that no room ever has two bots."""

from __future__ import annotations

import json
import signal
import uuid

import pytest

from daemonproc import BotWatch, DaemonProcess, observing, run_cli, run_cli_many, write_config
from harness.util import async_wait_until
from supervisor.daemon.load import UNMEASURED_ROOM, LoopMonitor, allowance
from supervisor.heartbeat import read_heartbeats


@pytest.mark.parametrize("load, threshold, settled, recent, rooms", [
    (0.0, 0.7, 0, 0, 35),  # nothing measured yet: an unmeasured room is assumed to cost 0.02
    (0.35, 0.7, 10, 0, 10),  # 10 rooms cost 0.35: 10 more fit
    (0.35, 0.7, 5, 5, 0),  # 5 of them started within the window: counted at the measured cost, nothing fits
    (0.69, 0.7, 10, 0, 0),
    (0.9, 0.7, 10, 0, 0),  # over the line
    (0.0, 0.01, 0, 0, 0),  # a threshold below one unmeasured room takes none
    (0.001, 0.7, 100, 0, 349),  # idle rooms measure nearly nothing: each is assumed to cost at least 0.002
])
def test_allowance(load, threshold, settled, recent, rooms):
    assert allowance(load, threshold, settled, recent) == rooms


def test_load_is_loop_cpu_or_lag_whichever_is_higher():
    monitor = LoopMonitor(period=0.05, window=10.0)
    for i in range(101):  # 5 s of samples: 1 ms late each, one 100 ms late; the thread used 2.5 s of CPU
        monitor._sample(1000.0 + i * 0.05, 0.1 if i == 50 else 0.001, i * 0.025)
    load = monitor._load_at(1000.0 + 100 * 0.05)
    assert load.lag_p50 == 0.001 and load.lag_p99 == 0.001 and load.lag_max == 0.1
    assert load.cpu == pytest.approx(0.5) and load.load == pytest.approx(0.5)
    for i in range(101, 141):  # 2 s more in which 2 of 141 samples are 60 ms late: p99 lag rules
        monitor._sample(1000.0 + i * 0.05, 0.06 if i % 20 == 0 else 0.001, 2.5 + (i - 100) * 0.005)
    load = monitor._load_at(1000.0 + 140 * 0.05)
    assert load.lag_p99 == 0.06 and load.load == pytest.approx(0.06 / 0.05)
    assert UNMEASURED_ROOM > 0.01  # the threshold the test below gives its first daemon


@pytest.mark.livekit
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_loaded_daemon_leaves_rooms_to_another(tmp_path, redis_url, livekit_server):
    rooms = [f"load-{uuid.uuid4().hex[:6]}-{i}" for i in range(4)]
    # a threshold below the cost of one unmeasured room: this daemon takes no new room
    full = DaemonProcess(tmp_path / "full", redis_url, livekit_server.url, daemon_id="load-full",
                         load_threshold=0.01)
    spare = DaemonProcess(tmp_path / "spare", redis_url, livekit_server.url, daemon_id="load-spare",
                          load_threshold=0.95)
    async with observing(full, spare) as observer, BotWatch(observer, rooms) as watch:
        run_cli_many([["join", room] for room in rooms], full.config)
        full.start()

        async def beat(daemon_id: str):
            return next((b for b in await read_heartbeats(observer.redis, observer.keys) if b.id == daemon_id), None)

        async def declined_all() -> bool:
            b = await beat("load-full")
            return b is not None and b.declined >= len(rooms)

        await async_wait_until(declined_all, 60, "the loaded daemon declines every due room", 0.3)
        assert await observer.held_rooms() == {}
        shown = json.loads(run_cli("rooms", "--json", config=full.config).stdout)
        assert all(shown["rooms"][room]["wanted"] == "desired" and "session" not in shown["rooms"][room]
                   for room in rooms)
        [daemon] = shown["daemons"]
        assert daemon["id"] == "load-full" and daemon["load_threshold"] == 0.01 and daemon["declined"] >= 4
        assert 0 <= daemon["cpu"] <= 1 and daemon["load"] >= daemon["cpu"]
        assert await full.metric("room_supervisor_rooms_declined") >= 4
        table = run_cli("rooms", config=full.config).stdout
        assert "'load-full'" in table and "LOAD/LIMIT" in table and "/0.01" in table

        spare.start()  # a daemon with room to spare takes every room
        await observer.wait_connected(rooms, timeout=120)
        await async_wait_until(lambda: _held_by(observer, rooms, "load-spare"), 60, "load-spare holds every room")

        # the loaded daemon's threshold is raised (SIGHUP) and the other drains: it takes the rooms over
        write_config(full.config, redis_url, livekit_server.url, spool_dir=full.spool_dir, daemon_id=full.id,
                     http_port=full.http_port, load_threshold=0.95)
        full.signal(signal.SIGHUP)

        async def raised() -> bool:
            b = await beat("load-full")
            return b is not None and b.load_threshold == 0.95

        await async_wait_until(raised, 30, "load-full reloads its threshold", 0.3)
        seqs = {room: (await observer.records(room))[-1].seq for room in rooms}
        await spare.sigterm_exits(0)
        await observer.wait_connected(rooms, timeout=120, after=seqs)
        await async_wait_until(lambda: _held_by(observer, rooms, "load-full"), 60, "load-full holds every room")

        await watch.stop()
        assert watch.polls > 10 and watch.duplicates == [], watch.duplicates[:3]
        await full.sigterm_exits(0)


async def _held_by(observer, rooms: list[str], daemon: str) -> bool:
    held = await observer.held_rooms()
    return all(held.get(room, {}).get("daemon") == daemon for room in rooms)
