"""Garbage written by hand into ``rs:desired`` (a name that is not UTF-8, an empty name, a value that is not JSON,
JSON of the wrong shape) is logged once per entry and never claimed; the daemon goes on serving valid rooms,
stays healthy and drains cleanly."""

from __future__ import annotations

import asyncio
import json
import uuid

import msgspec
import pytest

from daemonproc import DaemonProcess, observing, run_cli, start_in_rooms
from harness.util import async_wait_until
from test_daemon_lifecycle import http_get

pytestmark = [pytest.mark.livekit, pytest.mark.slow, pytest.mark.timeout(300)]

VALID = msgspec.json.encode({"pipeline": "listen", "since": 1.0})


async def test_garbage_desired_entries_are_logged_once_and_skipped(tmp_path, redis_url, livekit_server):
    tag = uuid.uuid4().hex[:6]
    good, later, last = f"good-{tag}", f"later-{tag}", f"last-{tag}"
    garbage = {  # field -> value, and the warning the daemon writes about it
        b"\xff\xfe-" + tag.encode(): (VALID, f"entry b'\\xff\\xfe-{tag}' skipped, never claimed: room name is not "
                                             "valid UTF-8"),
        b"": (VALID, "entry '' skipped, never claimed: empty room name"),
        f"no-json-{tag}".encode(): (b"{not json", f"entry 'no-json-{tag}' skipped, never claimed: not desired-room"),
        f"shape-{tag}".encode(): (b'["listen", 1.0]', f"entry 'shape-{tag}' skipped, never claimed: not desired-room"),
    }
    daemon = DaemonProcess(tmp_path, redis_url, livekit_server.url)
    async with observing(daemon) as observer:
        await start_in_rooms(daemon, observer, [good], timeout=120)
        await observer.redis.hset(observer.keys.desired(), mapping={k: v for k, (v, _) in garbage.items()})

        # The reconcile loop lives on: a room joined after the garbage is claimed and joined, and the join makes
        # the daemon read all of desired state soon, where it finds the garbage.
        assert run_cli("join", later, config=daemon.config).returncode == 0
        await observer.wait_connected([later], timeout=60)
        await async_wait_until(lambda: all(w in daemon.log_tail(5000) for _, w in garbage.values()), 60,
                               "every garbage entry reported", 0.3)
        # Another join, another full read: each entry is still reported once.
        reads = await daemon.full_reads()
        assert run_cli("join", last, config=daemon.config).returncode == 0
        await observer.wait_connected([last], timeout=60)
        await async_wait_until(lambda: _more_reads(daemon, reads), 60, "another full read of desired state", 0.3)
        log = daemon.log_tail(5000)
        for field, (_, warning) in garbage.items():
            assert log.count(warning) == 1, (field, warning)
        assert "unexpected error" not in log and "ended (" not in log

        held = await observer.held_rooms()
        assert sorted(held) == sorted([good, later, last]) and all(v["state"] == "running" for v in held.values())
        status, body = await asyncio.to_thread(http_get, daemon.http_port, "/healthz")
        assert status == 200 and json.loads(body)["checks"]["loops"] is True, body
        listed = run_cli("rooms", "--json", config=daemon.config)
        assert listed.returncode == 0, listed.stderr
        shown = json.loads(listed.stdout)["rooms"]
        assert shown[f"\\xff\\xfe-{tag}"]["desired"] == {"error": "unreadable desired-state entry"}
        assert shown[""]["desired"] == {"error": "unreadable desired-state entry"}
        assert shown[later]["session"]["state"] == "running"

        await daemon.sigterm_exits(0)
        for room in (good, later):
            assert (await observer.types(room))[-1] == "session_ended"
        await async_wait_until(lambda: _no_bots(observer, [good, later, last]), 30, "our bots to leave")


async def _no_bots(observer, rooms: list[str]) -> bool:
    return not any((await observer.bots_by_room(rooms)).values())


async def _more_reads(daemon: DaemonProcess, than: float) -> bool:
    return await daemon.full_reads() > than
