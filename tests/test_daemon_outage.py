"""A Redis outage ends no call and loses no message.

Five live rooms, each with a caller who publishes audio and sends a numbered reliable data message every
0.3 s. Redis is frozen (SIGSTOP) for 30 s, or killed -9 and restarted after 30 s (appendfsync always). All along,
LiveKit's participant lists (polled) show the same one bot in every room; afterwards every message is in the
room's stream exactly once, in order, with gapless sequence numbers, no session ended, and the stream says
when the store was away and for how long.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from daemonproc import BotWatch, DaemonProcess, Observer, observing, start_in_rooms
from eventstore.records import DataReceived, SessionEnded, SessionStarted, StoreRestored, StoreUnavailable
from harness.participant import Participant
from harness.util import async_wait_until

pytestmark = [pytest.mark.livekit, pytest.mark.slow, pytest.mark.timeout(300)]

ROOMS = 5
OUTAGE = 30.0  # s
SEND_EVERY = 0.3  # s
TOPIC = "numbered"


class Caller:
    """A real rtc participant that publishes a tone and sends ``0``, ``1``, ... every :data:`SEND_EVERY` s."""

    def __init__(self, url: str, room: str) -> None:
        self.participant = Participant(url, room, f"caller-{uuid.uuid4().hex[:6]}")
        self.sent = 0
        self._stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.participant.join()
        await self.participant.publish_tone()

    def start_sending(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        while not self._stop.is_set():
            await self.participant.send_text(str(self.sent), TOPIC)
            self.sent += 1
            try:
                await asyncio.wait_for(self._stop.wait(), SEND_EVERY)
            except asyncio.TimeoutError:
                pass

    async def stop_sending(self) -> None:
        self._stop.set()
        if self.task is not None:
            await self.task

    async def leave(self) -> None:
        await self.stop_sending()
        await self.participant.leave()


async def calls_through(observer: Observer, callers: list[Caller], rooms: list[str], disruption) -> BotWatch:
    """The callers join and talk; ``disruption()`` runs 3 s into the calls and they go on 5 s after it; returns
    the watch of LiveKit's participant lists, once every message sent is in Redis."""
    try:
        for caller in callers:
            await caller.start()
        await async_wait_until(lambda: _all_seen(observer, callers), 60, "the bots to see their callers", 0.3)
        watch = BotWatch(observer, rooms, period=0.5)
        for caller in callers:
            caller.start_sending()
        await asyncio.sleep(3)  # a few messages before
        await disruption()
        await asyncio.sleep(5)  # and after
        for caller in callers:
            await caller.stop_sending()
        await watch.stop()
        await async_wait_until(lambda: _all_recorded(observer, callers), 90, "every message in Redis", 0.5)
    finally:
        for caller in callers:
            await caller.leave()
    return watch


async def every_message_once(observer: Observer, caller: Caller, watch: BotWatch) -> list:
    """The caller's room: gapless seqs, every message once and in order, one session that never ended, the same
    bot in LiveKit's lists all along. Returns the room's records."""
    room = caller.participant.room_name
    records = await observer.records(room)
    assert [r.seq for r in records] == list(range(1, len(records) + 1)), room  # gapless
    sent = [str(i).encode() for i in range(caller.sent)]
    got = [r.data for r in records if isinstance(r, DataReceived) and r.topic == TOPIC]
    assert got == sent, (room, len(got), len(sent))  # every message once, in order
    started = [r for r in records if isinstance(r, SessionStarted)]
    assert len(started) == 1 and not [r for r in records if isinstance(r, SessionEnded)], room
    assert watch.seen[room] == {started[0].identity}, (room, watch.seen[room])  # the same bot throughout
    return records


async def _live_rooms(tmp_path, redis, livekit_server, outage) -> None:
    """Start the daemon in 5 rooms with callers, run ``outage()`` (which returns when Redis is back), and check
    that nothing was heard or lost."""
    rooms = [f"outage-{uuid.uuid4().hex[:6]}-{i}" for i in range(ROOMS)]
    daemon = DaemonProcess(tmp_path, redis.url, livekit_server.url)
    callers = [Caller(livekit_server.url, room) for room in rooms]
    async with observing(daemon) as observer:
        await start_in_rooms(daemon, observer, rooms, timeout=120)
        watch = await calls_through(observer, callers, rooms, outage)
        assert watch.polls > 20 and watch.duplicates == [] and watch.gaps == [], (watch.duplicates[:3], watch.gaps[:3])
        for caller in callers:
            records = await every_message_once(observer, caller, watch)
            room = caller.participant.room_name
            down = [r for r in records if isinstance(r, StoreUnavailable)]
            back = [r for r in records if isinstance(r, StoreRestored)]
            assert len(down) == 1 and len(back) == 1 and down[0].seq < back[0].seq, room
            assert back[0].since == down[0].since and back[0].down_for >= OUTAGE / 2, back[0]
            during = [r for r in records if isinstance(r, DataReceived) and r.topic == TOPIC
                      and down[0].since < r.ts < down[0].since + back[0].down_for]
            assert len(during) > OUTAGE / SEND_EVERY / 3, len(during)  # the call went on during the outage
        await daemon.sigterm_exits(0)


async def _all_seen(observer: Observer, callers: list[Caller]) -> bool:
    for caller in callers:
        records = await observer.records(caller.participant.room_name)
        if not any(getattr(r, "participant_id", None) == caller.participant.identity for r in records):
            return False
    return True


async def _all_recorded(observer: Observer, callers: list[Caller]) -> bool:
    for caller in callers:
        try:
            records = await observer.records(caller.participant.room_name)
        except RedisConnectionError:  # a pooled connection from before the restart; the next poll reads
            return False
        if sum(1 for r in records if isinstance(r, DataReceived) and r.topic == TOPIC) < caller.sent:
            return False
    return True


async def test_a_frozen_redis_ends_no_call_and_loses_no_message(tmp_path, fresh_redis, livekit_server):
    async def freeze() -> None:
        assert fresh_redis.proc is not None
        os.kill(fresh_redis.proc.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(OUTAGE)
        finally:
            os.kill(fresh_redis.proc.pid, signal.SIGCONT)

    await _live_rooms(tmp_path, fresh_redis, livekit_server, freeze)


async def test_a_killed_and_restarted_redis_ends_no_call_and_loses_no_message(tmp_path, fresh_redis, livekit_server):
    async def kill_and_restart() -> None:
        fresh_redis.kill()
        await asyncio.sleep(OUTAGE)
        await asyncio.to_thread(fresh_redis.start)

    await _live_rooms(tmp_path, fresh_redis, livekit_server, kill_and_restart)

