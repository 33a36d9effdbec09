"""The real daemon with 20 rooms: join and leave through the CLI, sd_notify, /healthz and /metrics, and a
SIGTERM drain that writes before_disconnect and disconnected for every room and exits 0 within the bound."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid

import pytest

from daemonproc import DaemonProcess, NotifyListener, Observer, observing, run_cli, run_cli_many, start_in_rooms
from eventstore.records import tag_of
from harness.util import async_wait_until
from harness.fixtures import both_redis_url  # noqa: F401 - every test here runs on one server and on a cluster

pytestmark = [pytest.mark.livekit, pytest.mark.slow, pytest.mark.timeout(420)]

ROOMS = 20
DRAIN_TIMEOUT = 30.0


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except urllib.error.URLError:
        return 0, b""  # nobody listens (yet)


async def test_join_leave_notify_drain(tmp_path, redis_url, livekit_server):
    tag = uuid.uuid4().hex[:6]
    # Names a person might use, including ones that need encoding in keys.
    rooms = [f"life {tag} #{i}" for i in range(ROOMS - 2)] + [f"life:{tag}:{{braces}}*", f"life-{tag}-ünï"]
    notify = NotifyListener()
    daemon = DaemonProcess(tmp_path, redis_url, livekit_server.url, drain_timeout=DRAIN_TIMEOUT,
                           env={"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "2000000"})
    async with observing(daemon, notify=notify, log_lines=120) as observer:
        run_cli_many([["join", room] for room in rooms], daemon.config)
        again = run_cli("join", rooms[0], config=daemon.config)
        assert again.returncode == 0 and "nothing changed" in again.stdout
        daemon.start()
        await notify.wait_for("READY=1", timeout=60)
        await observer.wait_connected(rooms, timeout=180)
        await _running_and_observable(daemon, notify, observer, rooms)
        await _leave_through_the_cli(daemon, observer, rooms[:2], rooms[2:])
        await _sigterm_drains(daemon, notify, observer, rooms[2:])


async def _running_and_observable(daemon: DaemonProcess, notify: NotifyListener, observer: Observer,
                                  rooms: list[str]) -> None:
    bots = await observer.bots_by_room(rooms)
    assert all(len(b) == 1 for b in bots.values()), bots
    # sd_notify: a status with the room count, watchdog pings from the loop
    await async_wait_until(lambda: any(f"{ROOMS} rooms running" in line for line in notify.lines()), 30,
                           "STATUS with 20 rooms running")
    await notify.wait_for("WATCHDOG=1", timeout=10)
    status, body = await asyncio.to_thread(http_get, daemon.http_port, "/healthz")
    assert status == 200, body
    assert json.loads(body)["ok"] is True
    status, metrics = await asyncio.to_thread(http_get, daemon.http_port, "/metrics")
    text = metrics.decode()
    assert status == 200
    assert "room_supervisor_rooms_desired 20.0" in text
    assert 'room_supervisor_sessions{state="running"} 20.0' in text
    assert "room_supervisor_append_latency_seconds_count" in text
    assert "room_supervisor_events_written_total" in text
    assert 'room_supervisor_dependency_up{dependency="livekit"} 1.0' in text
    assert 'room_supervisor_dependency_up{dependency="redis"} 1.0' in text


async def _no_bots(observer: Observer, room: str) -> bool:
    return await observer.bots(room) == []


async def _leave_through_the_cli(daemon: DaemonProcess, observer: Observer, left: list[str],
                                 staying: list[str]) -> None:
    """Leaving two rooms: their bots leave, the others stay; leaving again changes nothing."""
    for room in left:
        out = run_cli("leave", room, config=daemon.config)
        assert out.returncode == 0 and "will be left" in out.stdout, out
    for room in left:
        await async_wait_until(lambda r=room: _ended(observer, r), 60, f"{room} to end its session")
        # session_ended is written as the session ends; the daemon then makes sure LiveKit no longer lists the
        # bot (livekit-server can ignore a leave under load; the daemon removes the bot after a second)
        await async_wait_until(lambda r=room: _no_bots(observer, r), 10, f"LiveKit to stop listing {room}'s bot")
        ended = [r for r in await observer.records(room) if type(r).__struct_config__.tag == "session_ended"]
        assert (ended[-1].reason, ended[-1].rejoin) == ("left", False), ended[-1]
    again = run_cli("leave", left[0], config=daemon.config)
    assert again.returncode == 0 and "nothing changed" in again.stdout
    listed = run_cli("rooms", "--json", config=daemon.config)
    assert listed.returncode == 0, listed.stderr
    shown = json.loads(listed.stdout)["rooms"]
    assert all(shown[r]["session"]["state"] == "running" for r in staying)
    assert all("desired" not in shown[r] for r in left)


async def _sigterm_drains(daemon: DaemonProcess, notify: NotifyListener, observer: Observer,
                          rooms: list[str]) -> None:
    """SIGTERM: a bounded drain, every room leaves gracefully, exit 0."""
    await daemon.sigterm_exits(0, timeout=DRAIN_TIMEOUT + 15)
    await notify.wait_for("STOPPING=1", timeout=5)
    for room in rooms:
        types = await observer.types(room)
        tail = types[types.index("before_disconnect"):]
        assert "disconnected" in tail and tail[-1] == "session_ended", (room, types)
        ended = [r for r in await observer.records(room) if tag_of(r) == "session_ended"][-1]
        assert ended.reason == "drained" and ended.rejoin is False
    async def no_bots_left() -> bool:  # LiveKit updates its participant lists in its own time
        return all(not b for b in (await observer.bots_by_room(rooms)).values())

    await async_wait_until(no_bots_left, 30, "LiveKit to list no bot in any drained room", interval=0.2)
    assert await observer.held_rooms() == {}  # the heartbeat is gone with the daemon


async def _ended(observer: Observer, room: str) -> bool:
    types = await observer.types(room)
    return "before_disconnect" in types and "disconnected" in types and types[-1] == "session_ended"


async def test_rooms_shows_participants_and_call_state(tmp_path, redis_url, livekit_server, participant_factory):
    """``rooms`` joins desired state, the daemon's heartbeat and the consumers' materialized states."""
    room = f"shown-{uuid.uuid4().hex[:6]}"
    daemon = DaemonProcess(tmp_path, redis_url, livekit_server.url)
    async with observing(daemon) as observer:
        await start_in_rooms(daemon, observer, [room], timeout=120)
        await participant_factory("alice", room=room)
        await async_wait_until(lambda: _has(observer, room, "participant_connected"), 30, "alice recorded")
        for projection in ("participants", "call-state"):
            out = run_cli("consume", projection, "--until-caught-up", config=daemon.config)
            assert out.returncode == 0, out.stderr[-2000:]
        listed = run_cli("rooms", "--json", config=daemon.config)
        shown = json.loads(listed.stdout)["rooms"][room]
        assert shown["desired"]["pipeline"] == "listen"
        assert shown["session"]["state"] == "running" and shown["session"]["daemon"] == daemon.id
        assert shown["participants"]["present"] == ["alice"]
        assert shown["call-state"]["state"] == "joined" and shown["call-state"]["phase"] == "active"
        table = run_cli("rooms", config=daemon.config)
        line = next(line for line in table.stdout.splitlines() if room in line)
        assert "running@" in line and "joined/active" in line and "alice" in line
        await daemon.sigterm_exits(0)


async def _has(observer: Observer, room: str, tag: str) -> bool:
    return tag in await observer.types(room)
