"""Signals and health of the real daemon: /healthz says what is wrong while LiveKit is missing; SIGHUP reloads
(refusing a broken file); SIGTERM before READY exits 0; a second SIGTERM ends a stuck drain at once."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid

import pytest

from daemonproc import FORCED_EXIT_DEADLINE, DaemonProcess, NotifyListener, Observer, observing, start_in_rooms
from harness.util import async_wait_until, free_port

from test_daemon_lifecycle import http_get

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_unhealthy_until_livekit_answers_then_reload_and_sigterm(tmp_path, redis_url):
    notify = NotifyListener()
    missing_livekit = f"ws://127.0.0.1:{free_port()}"
    daemon = DaemonProcess(tmp_path, redis_url, missing_livekit, env={"NOTIFY_SOCKET": notify.name})
    async with observing(daemon, notify=notify) as observer:
        daemon.start()

        async def unhealthy():
            status, body = await asyncio.to_thread(http_get, daemon.http_port, "/healthz")
            return status == 503 and json.loads(body)

        health = await async_wait_until(unhealthy, 60, "/healthz 503", 0.5)
        assert health["ok"] is False
        assert health["checks"]["redis"] is True and health["checks"]["livekit"] is False
        assert any(p.startswith("livekit:") for p in health["problems"])
        await async_wait_until(lambda: any(line.startswith("STATUS=waiting") for line in notify.lines()), 30,
                               "STATUS=waiting ...")
        assert "READY=1" not in notify.lines()

        good = daemon.config.read_text()
        daemon.config.write_text("[daemon\nthis is not toml")
        daemon.signal(signal.SIGHUP)
        await async_wait_until(lambda: "reload refused" in daemon.log_tail(), 30, "reload refused")
        daemon.config.write_text(good.replace("[daemon]\n", "[daemon]\nmax_rooms = 7\n"))
        daemon.signal(signal.SIGHUP)
        await async_wait_until(lambda: "settings reloaded" in daemon.log_tail(), 30, "settings reloaded")
        assert "RELOADING=1" in notify.lines()
        beat = await async_wait_until(lambda: _heartbeat(observer, daemon.id), 30, "heartbeat with max_rooms 7")
        assert beat.max_rooms == 7 and beat.state == "starting"

        await daemon.sigterm_exits(0, timeout=30)
        assert "STOPPING=1" in notify.lines()


async def _heartbeat(observer: Observer, daemon_id: str):
    from supervisor.heartbeat import read_heartbeats

    beats = [b for b in await read_heartbeats(observer.redis, observer.keys) if b.id == daemon_id]
    return beats[0] if beats and beats[0].max_rooms == 7 else None


@pytest.mark.livekit
async def test_second_sigterm_cuts_a_stuck_drain_short(tmp_path, redis_url, livekit_server):
    room = f"stuck-{uuid.uuid4().hex[:6]}"
    notify = NotifyListener()
    daemon = DaemonProcess(tmp_path, redis_url, livekit_server.url, drain_timeout=120.0,
                           env={"NOTIFY_SOCKET": notify.name})
    async with observing(daemon, notify=notify) as observer:
        await start_in_rooms(daemon, observer, [room], pipeline="slow_leave", timeout=120)
        daemon.signal(signal.SIGTERM)
        await notify.wait_for("STOPPING=1", timeout=30)
        await async_wait_until(lambda: _types_include(observer, room, "before_disconnect"), 30,
                               "the slow on_before_disconnect to start")
        assert daemon.running  # the drain waits for the slow handler
        daemon.signal(signal.SIGTERM)
        # forced: at once (the old path took 5 s and more), and not a clean drain
        assert await daemon.wait_exit(FORCED_EXIT_DEADLINE) == 1, daemon.log_tail()
        assert "did not end in time; cancelled" in daemon.log_tail()


async def _types_include(observer: Observer, room: str, tag: str) -> bool:
    return tag in await observer.types(room)


async def test_aclose_is_safe_twice_and_after_a_failed_start(tmp_path, redis_url):
    import msgspec

    from supervisor.daemon.lifecycle import Daemon, DaemonStartError
    from supervisor.settings import load_settings

    settings = load_settings(environ={"REDIS_URL": redis_url, "RS_WRITER_SPOOL_DIR": str(tmp_path / "spool"),
                                      "RS_DAEMON_HTTP_PORT": "0", "LIVEKIT_URL": f"ws://127.0.0.1:{free_port()}"})
    never_run = Daemon(settings)
    await never_run.aclose()
    await never_run.aclose()

    (tmp_path / "file").write_text("")
    unusable = msgspec.structs.replace(settings.writer, spool_dir=str(tmp_path / "file" / "spool"))
    failed = Daemon(msgspec.structs.replace(settings, writer=unusable))
    with pytest.raises(DaemonStartError, match="spool directory"):
        await failed.run()
    await failed.aclose()
