"""A daemon on a real Redis Cluster keeps every call through a master failover (step 7's promise on a cluster).

Ten live rooms, each with a caller who publishes audio and sends a numbered reliable data message every 0.3 s; the
daemon appends with ``redis.wait_replicas = 1``. The master holding the first room's keys is killed with SIGKILL;
its replica is promoted within seconds and the killed node comes back as its replica (as a restarted server
does). All along LiveKit lists the same one bot in every room; afterwards every message is in its room's stream
exactly once, in order, with gapless seqs, and no session ended.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from daemonproc import DaemonProcess, observing, start_in_rooms
from eventstore.keys import Keys
from test_daemon_outage import Caller, calls_through, every_message_once

pytestmark = [pytest.mark.livekit, pytest.mark.slow, pytest.mark.timeout(300)]

ROOMS = 10


async def test_a_master_failover_ends_no_call_and_loses_no_message(tmp_path, private_cluster, livekit_server):
    rooms = [f"failover-{uuid.uuid4().hex[:6]}-{i}" for i in range(ROOMS)]
    victim = private_cluster.master_of(Keys().events(rooms[0]))
    on_victim = [r for r in rooms if private_cluster.master_of(Keys().events(r)) is victim]
    daemon = DaemonProcess(tmp_path, private_cluster.url, livekit_server.url, env={"RS_REDIS_WAIT_REPLICAS": "1"})
    callers = [Caller(livekit_server.url, room) for room in rooms]
    async with observing(daemon) as observer:
        await start_in_rooms(daemon, observer, rooms, timeout=120)

        async def failover() -> None:
            took = await asyncio.to_thread(private_cluster.kill_master, victim)
            await asyncio.to_thread(private_cluster.rejoin, victim)
            print(f"\nmaster {victim.port} (holding {len(on_victim)} of the rooms) killed; promoted in {took:.1f} s")

        watch = await calls_through(observer, callers, rooms, failover)
        assert watch.polls > 10 and watch.duplicates == [] and watch.gaps == [], (watch.duplicates[:3], watch.gaps[:3])
        for caller in callers:
            await every_message_once(observer, caller, watch)
        await daemon.sigterm_exits(0)
