"""Spools: what a daemon could not write to Redis waits in its spool file, even through a forced exit, and is
replayed before the next start claims any room. A spooled record carries the fencing epoch of the lease it was
written under; once a daemon claims the room again (epoch + 1) the room refuses it as ``FENCED`` into
``rs:dead``. So the daemon's own spool (left by its previous run) and the spools of gone daemons must be in
Redis before its first claim, even when Redis comes up only after the daemon started."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from daemonproc import (FORCED_EXIT_DEADLINE, DaemonProcess, NotifyListener, Observer, observing, run_cli, run_cli_many,
                        start_in_rooms)
from eventstore.keys import Keys, encode_name
from eventstore.records import DataReceived, tag_of
from eventstore.spool import Spool
from eventstore.writer import EventWriter
from harness.util import async_wait_until
from supervisor.daemon.leases import Leases

from test_daemon_lifecycle import http_get

pytestmark = [pytest.mark.livekit, pytest.mark.slow, pytest.mark.timeout(300)]

# Spooled records per room (each spooled while the spool already holds data, so each is a unit of its own).
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


async def spooled_data(path: Path, workdir: Path) -> list[bytes]:
    """The payloads of the ``data_received`` records in a spool, read from a copy (reading consumes)."""
    copy = workdir / "inspect.spool"
    shutil.copy(path, copy)
    offset = path.with_name(path.name + ".offset")
    if offset.exists():
        shutil.copy(offset, copy.with_name(copy.name + ".offset"))
    spool, payloads = Spool(copy), []
    try:
        while window := await spool.next_window(max_batch=1000):
            for unit in window.batches:
                payloads += [data[1:] for kind, _, data in unit.items if kind == "data_received"]
            await spool.consumed(window)
    finally:
        await spool.aclose()
    return payloads


@pytest.mark.timeout(360)
async def test_second_sigterm_exits_at_once_and_keeps_unwritten_records_in_the_spool(
        tmp_path, fresh_redis, livekit_server, participant_factory):
    """Redis dies under a running daemon; a caller's data keeps coming (the records wait in memory); a drain
    hangs in a slow ``on_before_disconnect``; a second SIGTERM ends the daemon at once (exit 1), and what never
    reached Redis is in the spool. The next start, once Redis is back, puts it in the room's stream."""
    room = f"forced-{uuid.uuid4().hex[:6]}"
    payloads = [f"while redis was down #{i}".encode() for i in range(5)]
    notify = NotifyListener()
    daemon = DaemonProcess(tmp_path, fresh_redis.url, livekit_server.url, drain_timeout=120.0,
                           env={"NOTIFY_SOCKET": notify.name})
    async with observing(daemon, notify=notify, log_lines=150) as observer:
        await start_in_rooms(daemon, observer, [room], pipeline="slow_leave", timeout=120)
        caller = await participant_factory("caller", room=room)
        await async_wait_until(lambda: _has(observer, room, "participant_connected"), 30, "the caller recorded")
        epoch = (await observer.records(room))[-1].epoch

        fresh_redis.kill()
        for payload in payloads:
            await caller.send_bytes(payload, "chat")
        await async_wait_until(lambda: _writer_pending(daemon) >= len(payloads), 30, "the records to wait in memory")
        daemon.signal(signal.SIGTERM)
        await notify.wait_for("STOPPING=1", timeout=30)
        await asyncio.sleep(1.0)
        assert daemon.running  # the drain waits for the slow handler (up to drain_timeout, 120 s)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(FORCED_EXIT_DEADLINE) == 1, daemon.log_tail()  # at once, not clean

        spool = daemon.spool_dir / f"{encode_name(daemon.id)}.spool"
        assert await spooled_data(spool, tmp_path) == payloads

        fresh_redis.start()
        await observer.redis.connection_pool.disconnect()  # its connections died with the server
        assert run_cli("leave", room, config=daemon.config).returncode == 0  # the next start only replays
        daemon.start()
        await async_wait_until(lambda: spool_is_empty(spool), 60, "the spool replayed")
        data = [r for r in await observer.records(room) if tag_of(r) == "data_received"]
        assert [r.data for r in data] == payloads and all(r.epoch == epoch for r in data)
        assert await observer.redis.xlen(observer.keys.dead()) == 0
        await daemon.sigterm_exits(0)


async def _has(observer: Observer, room: str, tag: str) -> bool:
    return tag in await observer.types(room)


def _writer_pending(daemon: DaemonProcess) -> float:
    status, body = http_get(daemon.http_port, "/metrics")
    match = re.search(rb"^room_supervisor_writer_pending (\S+)$", body, re.M)
    return float(match.group(1)) if status == 200 and match else 0.0
