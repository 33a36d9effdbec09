"""``rooms`` says why a room is no longer wanted: ``failed`` with the reason the daemon stored in desired state,
``ended`` with the reason of the session that ended the call (the room's last record), one readable line per
room; ``--json`` has the same facts. The last records are read in pipelined round trips, not one per room.

The fast tests write desired state with :class:`supervisor.control.Control` (the daemon's own calls) and records
through the real writer; the last test runs the real daemon against a real LiveKit server.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from livekit import api as lkapi
from redis.asyncio.client import Pipeline, Redis

from consumer_support import client, write
from daemonproc import DaemonProcess, observing, run_cli, start_in_rooms
from eventstore.keys import Keys
from eventstore.records import Connected, SessionEnded, SessionStarted
from harness.util import async_wait_until
from supervisor.cli import main
from supervisor.control import Control

KEYS = Keys()
WHY = ("pipeline_error: the factory raised ValueError('no pipeline today')\nTraceback (most recent call last):\n"
       "  File \"bot.py\", line 3\n" + "x" * 300)


def session(room: str, reason: str, rejoin: bool = False) -> list:
    now = time.time()
    return [SessionStarted(room=room, session="s1", ts=now, identity="rs-bot-1", pipeline="echo"),
            Connected(room=room, session="s1", ts=now, identity="rs-bot-1"),
            SessionEnded(room=room, session="s1", ts=now, reason=reason, rejoin=rejoin, detail="ROOM_CLOSED"
                         if reason == "room_closed" else "")]


def setup_rooms(url: str) -> None:
    async def go() -> None:
        redis = client(url)
        control = Control(redis, KEYS)
        try:
            for room in ("failed room", "wanted room", "rejoining room"):
                await control.join(room, "echo")
            await write(redis, session("failed room", "pipeline_error") + session("closed room", "room_closed")
                        + session("left room", "left") + session("rejoining room", "connection_lost", True)
                        + session("stray room", "connection_lost", True) + session("garbage room", "left"))
            await redis.xadd(KEYS.events("garbage room"), {"hello": "world"})  # its last entry is no record
            assert await control.mark_failed("failed room", await control.get("failed room"), WHY)
        finally:
            await redis.aclose()

    asyncio.run(go())


def test_rooms_shows_why_a_room_failed_or_ended(redis_url, capsys):
    setup_rooms(redis_url)
    capsys.readouterr()
    assert main(["rooms", "--redis-url", redis_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ROOM", "WANTED", "PIPELINE", "CAME", "SESSION@DAEMON", "CALL", "STATE/PHASE",
                                "PEOPLE", "WHY"]
    table = lines[1:lines.index("")]  # then the daemons' table (none run here)
    assert lines[lines.index("") + 1].split()[:2] == ["DAEMON", "STATE"] and lines[-1] == "(no daemon running)"
    shown = {line.split("'")[1]: line.split("'", 2)[2].split(None, 6) for line in table}
    assert shown["closed room"] == ["ended", "-", "-", "-", "-", "-", "room_closed: ROOM_CLOSED"]
    assert shown["left room"] == ["ended", "-", "-", "-", "-", "-", "left"]
    assert shown["wanted room"][:3] == ["desired", "echo", "join"] and shown["wanted room"][6] == "-"
    assert shown["rejoining room"][:2] == ["desired", "echo"]  # desired wins over its last record
    assert shown["stray room"][0] == "-" and shown["garbage room"][0] == "-"  # no call end to show
    failed = shown["failed room"]
    assert failed[:3] == ["failed", "echo", "join"]
    assert failed[6] == "pipeline_error: the factory raised ValueError('no pipeline today') Traceback (most recent call last…"
    assert len(failed[6]) == 100  # one line, cut to fit
    assert len(table) == 7

    assert main(["rooms", "--json", "--redis-url", redis_url]) == 0
    rooms = json.loads(capsys.readouterr().out)["rooms"]
    assert (rooms["failed room"]["wanted"], rooms["failed room"]["why"]) == ("failed", WHY)
    assert rooms["failed room"]["desired"]["failed"] == WHY
    closed = rooms["closed room"]
    assert (closed["wanted"], closed["why"]) == ("ended", "room_closed: ROOM_CLOSED")
    assert closed["last"] == {"seq": 3, "type": "session_ended", "ts": closed["last"]["ts"], "reason": "room_closed",
                              "rejoin": False, "detail": "ROOM_CLOSED"}
    assert (rooms["wanted room"]["wanted"], rooms["wanted room"]["why"]) == ("desired", "")
    assert rooms["garbage room"]["last"]["error"] == "not a record (missing_field)"
    assert rooms["stray room"]["last"]["rejoin"] is True and rooms["stray room"]["wanted"] == "-"


def test_last_records_are_read_in_pipelined_round_trips(redis_url, capsys, monkeypatch):
    """1,003 listed rooms: their last records come in two pipelines (1,000 rooms each at most); no XREVRANGE is
    sent on its own."""
    setup_rooms(redis_url)
    redis = _sync(redis_url)
    redis.zadd(KEYS.rooms(), {f"more-{i:04d}": 2_000_000_000 + i for i in range(1000)})
    redis.close()
    pipelines: list[list[str]] = []
    alone: list[str] = []
    execute, execute_command = Pipeline.execute, Redis.execute_command

    async def spy_execute(self, raise_on_error: bool = True):
        pipelines.append([str(args[0]).upper() for args, _ in self.command_stack])
        return await execute(self, raise_on_error)

    async def spy_command(self, *args, **options):
        alone.append(str(args[0]).upper())
        return await execute_command(self, *args, **options)

    monkeypatch.setattr(Pipeline, "execute", spy_execute)
    monkeypatch.setattr(Redis, "execute_command", spy_command)
    assert main(["rooms", "--json", "--redis-url", redis_url]) == 0
    listed = json.loads(capsys.readouterr().out)["rooms"]
    assert len(listed) == 1003  # the newest 1,000 recorded rooms and the 3 desired ones
    with_last = [p for p in pipelines if "XREVRANGE" in p]
    assert [p.count("XREVRANGE") for p in with_last] == [1000, 3]
    assert "XREVRANGE" not in alone


async def test_rooms_after_the_real_daemon_failed_one_room_and_another_call_ended(tmp_path, redis_url,
                                                                                  livekit_server):
    tag = uuid.uuid4().hex[:6]
    deleted, left, broken = f"deleted-{tag}", f"left-{tag}", f"broken-{tag}"
    daemon = DaemonProcess(tmp_path, redis_url, livekit_server.url)
    async with observing(daemon, log_lines=150) as observer:
        control = Control(observer.redis, observer.keys)
        await control.join(broken, "no_such_pipeline")  # written by hand: the CLI refuses unknown names
        await start_in_rooms(daemon, observer, [deleted, left], pipeline="echo")
        await observer.livekit.room.delete_room(lkapi.DeleteRoomRequest(room=deleted))
        assert run_cli("leave", left, config=daemon.config).returncode == 0

        async def settled() -> bool:
            desired = await control.desired()
            return (deleted not in desired.rooms and left not in desired.rooms
                    and bool(desired.rooms.get(broken) and desired.rooms[broken].failed))

        await async_wait_until(settled, 90, "one room failed, two calls over", 0.5)
        table = run_cli("rooms", config=daemon.config)
        assert table.returncode == 0, table.stderr
        out = table.stdout.splitlines()
        lines = {line.split("'")[1]: line for line in out[1:out.index("")]}
        assert any(line.startswith(f"'{daemon.id}'") and " ready " in line for line in out[out.index(""):])
        assert lines[deleted].split()[1] == "ended" and " room_deleted: LiveKit: ROOM_DELETED" in lines[deleted]
        assert lines[left].split()[1] == "ended" and lines[left].rstrip().endswith(" left")
        assert lines[broken].split()[1:3] == ["failed", "no_such_pipeline"]
        assert "pipeline_error: " in lines[broken] and "no_such_pipeline" in lines[broken].split("pipeline_error")[1]
        shown = json.loads(run_cli("rooms", "--json", config=daemon.config).stdout)["rooms"]
        assert shown[deleted]["last"]["reason"] == "room_deleted"
        assert shown[deleted]["why"] == f"room_deleted: {shown[deleted]['last']['detail']}"
        assert shown[broken]["why"] == shown[broken]["desired"]["failed"]
        await daemon.sigterm_exits(0)


def _sync(url: str):
    import redis as syncredis

    return syncredis.Redis.from_url(url)


pytestmark = pytest.mark.timeout(300)
