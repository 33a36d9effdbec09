"""Spools are replayed before the daemon claims any room. A spooled record carries the fencing epoch of the lease
it was written under; once a daemon claims the room again (epoch + 1) the room refuses it as ``FENCED`` into
``rs:dead``. So the daemon's own spool (left by its previous run) and the spools of gone daemons must be in
Redis before its first claim, even when Redis comes up only after the daemon started."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from daemonproc import DaemonProcess, observing, run_cli_many
from eventstore.keys import Keys, encode_name
from eventstore.records import DataReceived, tag_of
from eventstore.spool import Spool
from eventstore.writer import EventWriter
from harness.util import async_wait_until
from supervisor.leases import Leases

pytestmark = [pytest.mark.livekit, pytest.mark.slow, pytest.mark.timeout(300)]

# Each record spooled while the spool already holds data is a unit of its own, and a replay sends one unit per
# room per round trip: a few hundred round trips, far longer than the daemon takes from READY to its claims.
PER_ROOM = 150


async def spool_while_redis_is_down(redis_url: str, spool_dir: Path, producer: str, epochs: dict[str, int]) -> None:
    """What a daemon leaves behind when its writer closes while Redis is down: a spool file with every record."""
    redis = aioredis.from_url(redis_url)
    spool = Spool(spool_dir / f"{encode_name(producer)}.spool")
    writer = EventWriter(redis, keys=Keys(), producer=producer, spool=spool, max_pending=1, max_block=0.0)
    await writer.start()
    for i in range(PER_ROOM):
        for room, epoch in epochs.items():
            await writer.append(DataReceived(room=room, session="earlier", ts=time.time(), producer=producer,
                                             epoch=epoch, participant_id="caller", data=f"{i}".encode()))
    await writer.aclose(timeout=0.5)
    await redis.aclose()
    assert writer.stats.written == 0 and writer.stats.spooled == PER_ROOM * len(epochs) and not spool.empty


def spool_is_empty(path: Path) -> bool:
    spool = Spool(path)
    try:
        return spool.empty
    finally:
        spool.close()


async def test_spools_are_replayed_before_the_first_claim(tmp_path, fresh_redis, livekit_server):
    tag = uuid.uuid4().hex[:6]
    own_rooms = [f"own-{tag}-{i}" for i in range(4)]
    orphan_rooms = [f"orphan-{tag}-{i}" for i in range(2)]
    daemon = DaemonProcess(tmp_path, fresh_redis.url, livekit_server.url, daemon_id=f"spooler-{tag}")
    daemon.spool_dir.mkdir()
    # The earlier holders: this daemon's previous run, and a daemon that is gone for good. Their leases ran out.
    redis = aioredis.from_url(fresh_redis.url)
    earlier = Leases(redis, Keys(), f"{daemon.id}/earlier", ttl=0.05)
    gone = Leases(redis, Keys(), "gone-daemon/1", ttl=0.05)
    own_epochs = {room: (await earlier.claim(room)).epoch for room in own_rooms}
    orphan_epochs = {room: (await gone.claim(room)).epoch for room in orphan_rooms}
    await redis.aclose()
    run_cli_many([["join", room] for room in own_rooms + orphan_rooms], daemon.config)

    fresh_redis.stop()
    await spool_while_redis_is_down(fresh_redis.url, daemon.spool_dir, daemon.id, own_epochs)
    await spool_while_redis_is_down(fresh_redis.url, daemon.spool_dir, "gone-daemon", orphan_epochs)
    async with observing(daemon, log_lines=150) as observer:
        daemon.start()
        await async_wait_until(lambda: "waiting: redis" in daemon.log_tail(), 60, "the daemon to wait for Redis")
        fresh_redis.start()
        await observer.wait_connected(own_rooms + orphan_rooms, timeout=180)

        assert await observer.redis.xlen(observer.keys.dead()) == 0  # nothing fenced
        for room, epoch in {**own_epochs, **orphan_epochs}.items():
            records = await observer.records(room)
            spooled, later = records[:PER_ROOM], records[PER_ROOM:]
            assert [(tag_of(r), r.epoch, r.data) for r in spooled] == [
                ("data_received", epoch, f"{i}".encode()) for i in range(PER_ROOM)
            ], room
            started = [r for r in later if tag_of(r) == "session_started"]
            assert started[0].cause == "takeover" and started[0].epoch == epoch + 1, started
        await daemon.sigterm_exits(0)

    assert spool_is_empty(daemon.spool_dir / f"{encode_name(daemon.id)}.spool")
    assert not (daemon.spool_dir / "gone-daemon.spool").exists()
