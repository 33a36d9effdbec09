"""How the real daemon answers LiveKit ending its bots, with 20 rooms on a private livekit-server:
room deleted or bot removed -> that room's call is over (no rejoin, no longer desired); server restart ->
every other room gets its bot back, through a new session (``session_started`` cause ``rejoin``) or rtc's own
full reconnect (``reconnected``)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from livekit import api as lkapi

from daemonproc import DaemonProcess, Observer, observing, start_in_rooms
from eventstore.records import tag_of
from harness.util import async_wait_until
from supervisor.control import Control

pytestmark = [pytest.mark.livekit, pytest.mark.slow, pytest.mark.timeout(480)]

ROOMS = 20


async def test_room_end_is_final_and_server_restart_is_rejoined(tmp_path, redis_url, fresh_livekit):
    rooms = [f"rejoin-{uuid.uuid4().hex[:6]}-{i}" for i in range(ROOMS)]
    deleted, removed, others = rooms[0], rooms[1], rooms[2:]
    daemon = DaemonProcess(tmp_path, redis_url, fresh_livekit.url)
    async with observing(daemon, log_lines=150) as observer:
        control = Control(observer.redis, observer.keys)
        await start_in_rooms(daemon, observer, rooms)

        await observer.livekit.room.delete_room(lkapi.DeleteRoomRequest(room=deleted))
        bot = (await observer.bots(removed))[0]
        await observer.livekit.room.remove_participant(lkapi.RoomParticipantIdentity(room=removed, identity=bot))
        for room, reason in ((deleted, "room_deleted"), (removed, "removed")):
            ended = await async_wait_until(lambda r=room: _last_ended(observer, r), 60, f"{room} ended")
            assert (ended.reason, ended.rejoin) == (reason, False), ended
            await async_wait_until(lambda r=room: _not_desired(control, r), 30, f"{room} no longer desired")

        seqs = {room: (await observer.records(room))[-1].seq for room in others}
        await asyncio.to_thread(fresh_livekit.restart)
        # A rejoin can land on the old server while it is still shutting down, and a session can outlive the
        # restart: the bot then recovers onto the new server by itself (rtc full reconnect: ``reconnected``)
        # instead of through another session. A bot that rtc lost without telling (no ``disconnected``) is
        # found missing by the daemon's presence check, which starts a new session (cause ``rejoin``).
        await async_wait_until(lambda: _back(observer, others, seqs), 240, "every room back in LiveKit", 1.0)
        for room in others:
            fresh = [r for r in await observer.records(room) if r.seq > seqs[room]]
            ended = [r for r in fresh if tag_of(r) == "session_ended"]
            started = [r for r in fresh if tag_of(r) == "session_started"]
            assert all(e.rejoin for e in ended) and len(ended) == len(started), (room, ended, started)
            assert all(s.cause == "rejoin" for s in started), (room, started)
            assert [s.attempt for s in started] == list(range(1, len(started) + 1))
        for room in (deleted, removed):  # the ended calls stay ended
            assert (await observer.types(room)).count("session_started") == 1

        await daemon.sigterm_exits(0)


async def _back(observer: Observer, rooms: list[str], seqs: dict[str, int]) -> bool:
    """Each room has one bot in LiveKit and, after ``seqs``, a bot that got (back) in: a new session's, or the
    same one's after rtc recovered it onto the new server by itself (a full reconnect: ``reconnected``, no
    session ended)."""
    bots = await observer.bots_by_room(rooms)
    if any(len(b) != 1 for b in bots.values()):
        return False
    for room in rooms:
        fresh = [tag_of(r) for r in await observer.records(room) if r.seq > seqs[room]]
        if not {"connected", "reconnected"} & set(fresh):
            return False
        if "session_started" in fresh and fresh.index("session_started") > max(
                i for i, t in enumerate(fresh) if t in ("connected", "reconnected")):
            return False  # a newer session is still joining
    return True


async def _last_ended(observer: Observer, room: str):
    ended = [r for r in await observer.records(room) if tag_of(r) == "session_ended"]
    return ended[-1] if ended else None


async def _not_desired(control: Control, room: str) -> bool:
    return await control.get(room) is None
