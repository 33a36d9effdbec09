"""A pipeline that raises ends only its own room: the daemon restarts it within the room's restart budget,
then marks the room failed; the 20 other rooms of the same process keep their first session throughout."""

from __future__ import annotations

import json
import uuid

import pytest

from daemonproc import DaemonProcess, observing, run_cli, start_in_rooms
from eventstore.records import tag_of
from harness.util import async_wait_until

pytestmark = [pytest.mark.livekit, pytest.mark.slow, pytest.mark.timeout(420)]

ROOMS = 20
BUDGET = 2


async def test_raising_pipeline_ends_only_its_room(tmp_path, redis_url, livekit_server, participant_factory):
    tag = uuid.uuid4().hex[:6]
    rooms = [f"calm-{tag}-{i}" for i in range(ROOMS)]
    bad = f"raising-{tag}"
    daemon = DaemonProcess(tmp_path, redis_url, livekit_server.url, restart_budget=BUDGET)
    async with observing(daemon, log_lines=150) as observer:
        caller = await participant_factory("caller", room=bad)
        await caller.publish_tone(440.0)  # the raising pipeline fails on the first audio frame it hears
        await start_in_rooms(daemon, observer, rooms, joins=[["join", bad, "--pipeline", "raising"]])

        async def bad_room_failed() -> bool:
            out = run_cli("rooms", "--json", config=daemon.config)
            return bool(json.loads(out.stdout)["rooms"].get(bad, {}).get("desired", {}).get("failed"))

        await async_wait_until(bad_room_failed, 120, f"{bad} marked failed", 1.0)

        records = await observer.records(bad)
        started = [r for r in records if tag_of(r) == "session_started"]
        ended = [r for r in records if tag_of(r) == "session_ended"]
        assert [s.cause for s in started] == ["join"] + ["restart"] * BUDGET, started
        assert len({s.identity for s in started}) == len(started)  # a fresh bot identity per session
        assert len({s.session for s in started}) == len(started)
        assert [e.reason for e in ended] == ["pipeline_error"] * (BUDGET + 1), ended
        assert await observer.bots(bad) == []

        # the other rooms never noticed: one session each, still in LiveKit, still running
        held = await observer.held_rooms()
        for room in rooms:
            types = await observer.types(room)
            assert types.count("session_started") == 1 and "session_ended" not in types, (room, types)
            assert held[room]["state"] == "running"
        bots = await observer.bots_by_room(rooms)
        assert all(len(b) == 1 for b in bots.values()), bots

        await daemon.sigterm_exits(0)
