"""kill -9 the real daemon with 20 rooms, start it again: every desired room is joined again, and each room's
stream says why (``session_started`` with cause ``takeover``: the restarted daemon, same id, takes the leases of
its dead run back at once, with a new epoch). The dead bots still listed by LiveKit are removed by the new
holder before its own join."""

from __future__ import annotations

import uuid

import pytest

from daemonproc import DaemonProcess, observing, start_in_rooms
from eventstore.records import tag_of
from harness.util import async_wait_until

pytestmark = [pytest.mark.livekit, pytest.mark.slow, pytest.mark.timeout(420)]

ROOMS = 20


async def test_kill9_then_start_again_rejoins_every_room(tmp_path, redis_url, livekit_server):
    rooms = [f"crash-{uuid.uuid4().hex[:6]}-{i}" for i in range(ROOMS)]
    daemon = DaemonProcess(tmp_path, redis_url, livekit_server.url)
    async with observing(daemon, log_lines=150) as observer:
        await start_in_rooms(daemon, observer, rooms)
        before = {room: (await observer.records(room))[-1].seq for room in rooms}

        daemon.kill9()
        daemon.start()
        await observer.wait_connected(rooms, timeout=180, after=before)

        for room in rooms:
            records = await observer.records(room)
            fresh = [r for r in records if r.seq > before[room]]
            started = [r for r in fresh if tag_of(r) == "session_started"]
            assert len(started) == 1, (room, [tag_of(r) for r in fresh])
            assert started[0].cause == "takeover", started[0]
            assert started[0].epoch > records[0].epoch  # a new fencing epoch for the new holder
            # the killed session never closed: no session_ended between the old records and the new session
            assert "session_ended" not in [tag_of(r) for r in records if r.seq <= before[room]]

        # LiveKit drops the dead bots by itself; then each room has exactly the new one
        new_identity = {room: [r for r in await observer.records(room) if tag_of(r) == "session_started"][-1].identity
                        for room in rooms}

        async def only_new_bots() -> bool:
            bots = await observer.bots_by_room(rooms)
            return all(bots[room] == [new_identity[room]] for room in rooms)

        await async_wait_until(only_new_bots, 90, "only the new bots in LiveKit", 1.0)
        # the new holder asked LiveKit to drop the dead bots instead of waiting for LiveKit to notice
        assert "removed earlier bot(s) of ours from LiveKit before joining" in daemon.log_tail(2000)

        await daemon.sigterm_exits(0)
