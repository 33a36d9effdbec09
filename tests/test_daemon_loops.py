"""The daemon's long-running loops: an unexpected error in one pass is logged and the loop goes on; a loop that
ends anyway makes /healthz answer 503 and stops the watchdog pings."""

from __future__ import annotations

import asyncio
import json
import logging
import types

import pytest

from harness.util import async_wait_until, free_port
from supervisor.daemon import loops as loops_mod
from supervisor.daemon.http import HttpEndpoint
from supervisor.daemon.loops import Loops
from supervisor.daemon.metrics import DaemonMetrics
from supervisor.daemon.health import LoopMonitor, Probes

from test_daemon_lifecycle import http_get


@pytest.fixture(autouse=True)
def short_pauses(monkeypatch):
    monkeypatch.setattr(loops_mod, "ERROR_PAUSE_BASE", 0.01)


async def test_a_raising_pass_is_logged_and_the_loop_goes_on(caplog):
    errors, passes = [], []

    async def step() -> None:
        passes.append(1)
        if len(passes) <= 3:
            raise ValueError(f"bad entry #{len(passes)}")
        await asyncio.sleep(0.01)

    loops = Loops(lambda: errors.append(1))
    with caplog.at_level(logging.ERROR, logger="supervisor"):
        loops.start("reconcile", step)
        await async_wait_until(lambda: len(passes) > 6, 10, "more passes after the errors")
    assert len(errors) == 3 and loops.problems() == []
    messages = [r.getMessage() for r in caplog.records]
    assert "loop reconcile: unexpected error (3 in a row); going on in 0s" in messages
    assert any("bad entry #1" in r.exc_text for r in caplog.records if r.exc_text)
    await loops.stop()
    assert loops.problems() == []  # stopped on purpose: not a problem


async def test_an_ended_loop_is_unhealthy(redis_url):
    loops = Loops()
    task = loops.start("control", lambda: asyncio.sleep(0.01))
    loops.start("heartbeat", lambda: asyncio.sleep(0.01))
    task.cancel()  # by nobody who owns it: the loop is gone
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert loops.problems() == ["loop control ended (cancelled)"]

    import redis.asyncio as aioredis

    async def list_rooms(_request: object) -> None:
        return None

    livekit = types.SimpleNamespace(room=types.SimpleNamespace(list_rooms=list_rooms))
    redis = aioredis.from_url(redis_url)
    monitor = LoopMonitor()
    monitor.start()
    probes = Probes(redis, livekit, monitor, DaemonMetrics(), loops.problems)  # type: ignore[arg-type]
    http = HttpEndpoint("127.0.0.1", 0, probes.health, lambda: b"")
    port = await http.start()
    try:
        status, body = await asyncio.to_thread(http_get, port, "/healthz")
        health = json.loads(body)
        assert status == 503 and health["checks"]["loops"] is False
        assert health["problems"] == ["loop control ended (cancelled)"]
        assert health["checks"]["redis"] is True and health["checks"]["livekit"] is True
    finally:
        await http.aclose()
        await loops.stop()
        monitor.task.cancel()
        await asyncio.gather(monitor.task, return_exceptions=True)
        await redis.aclose()


async def test_the_watchdog_stops_pinging_once_a_loop_ended(tmp_path, redis_url):
    from supervisor.daemon.lifecycle import Daemon
    from supervisor.settings import load_settings

    settings = load_settings(environ={"REDIS_URL": redis_url, "RS_WRITER_SPOOL_DIR": str(tmp_path / "spool"),
                                      "RS_DAEMON_HTTP_PORT": "0", "RS_DAEMON_WATCHDOG_INTERVAL": "0.01",
                                      "LIVEKIT_URL": f"ws://127.0.0.1:{free_port()}"})
    daemon = Daemon(settings)
    pings = []
    daemon.notifier.watchdog = lambda: pings.append(1) or True  # type: ignore[method-assign]
    try:
        await daemon._watchdog_step()
        assert pings == [1]
        daemon.loops.ended["reconcile"] = "cancelled"
        for _ in range(3):
            await daemon._watchdog_step()
        assert pings == [1]
    finally:
        await daemon.aclose()
