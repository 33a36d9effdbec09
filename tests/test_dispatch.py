"""LiveKit's agent dispatch brings rooms to the daemon (real livekit-server v1.13.5, real rtc participants, real
daemons registered as agent workers): through the AgentDispatch API, from a participant's token
(``RoomConfiguration.agents``), automatically for every new room; two daemons share the jobs LiveKit spreads, never
two bots in a room; the room of a daemon killed with SIGKILL is rejoined by the other one.

Timings are printed, never asserted (the deadlines below only bound a wait)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from livekit import api as lkapi
from livekit import rtc

from daemonproc import BotWatch, DaemonProcess, Observer, observing, run_cli
from eventstore.records import SessionEnded, SessionStarted
from harness.livekit_server import API_KEY, API_SECRET
from harness.participant import Participant
from harness.util import async_wait_until

pytestmark = [pytest.mark.livekit, pytest.mark.timeout(300)]


def _dispatching(tmp_path, redis_url, livekit_url, agent_name: str, **daemon) -> DaemonProcess:
    sections = {"dispatch": {"enabled": True, "agent_name": agent_name, "pipeline": "listen"}}
    return DaemonProcess(tmp_path, redis_url, livekit_url, sections=sections, **daemon)


async def _registered(daemon: DaemonProcess) -> None:
    await async_wait_until(lambda: _metric_is(daemon, "room_supervisor_dispatch_registered", 1.0), 60,
                           f"daemon {daemon.id} registered with LiveKit as a worker", 0.2)


async def _metric_is(daemon: DaemonProcess, name: str, value: float) -> bool:
    return await daemon.metric(name) == value


async def _started(observer: Observer, room: str) -> list[SessionStarted]:
    return [r for r in await observer.records(room) if isinstance(r, SessionStarted)]


async def _one_bot(observer: Observer, room: str, timeout: float) -> float:
    """Wait until LiveKit lists one bot of ours in ``room``; returns how long it took."""
    t0 = time.monotonic()
    await async_wait_until(lambda: _bots_are(observer, room, 1), timeout, f"one bot in {room}", 0.05)
    return time.monotonic() - t0


async def _bots_are(observer: Observer, room: str, n: int) -> bool:
    return len(await observer.bots(room)) == n


async def test_explicit_dispatch_joins_and_deleting_it_ends_the_session(tmp_path, redis_url, livekit_server):
    agent_name = f"rs-test-{uuid.uuid4().hex[:6]}"
    room = f"dispatch-{uuid.uuid4().hex[:8]}"
    daemon = _dispatching(tmp_path, redis_url, livekit_server.url, agent_name)
    caller = Participant(livekit_server.url, room, "caller")
    async with observing(daemon) as observer:
        daemon.start()
        await _registered(daemon)
        await caller.join()  # the room exists and has a person in it
        try:
            t0 = time.monotonic()
            dispatch = await observer.livekit.agent_dispatch.create_dispatch(
                lkapi.CreateAgentDispatchRequest(agent_name=agent_name, room=room))
            await _one_bot(observer, room, 60)
            print(f"\nexplicit dispatch -> bot in the room: {time.monotonic() - t0:.2f}s")
            await observer.wait_connected([room], timeout=30)
            started = await _started(observer, room)
            assert [(s.cause, s.dispatch) for s in started] == [("dispatch", dispatch.id)], started
            assert started[0].job.startswith("AJ_"), started[0]
            desired = await daemon_desired(observer, room)
            assert desired is not None and desired.cause == "dispatch" and desired.dispatch == dispatch.id
            listed = run_cli("rooms", config=daemon.config)
            line = next(line for line in listed.stdout.splitlines() if line.startswith(repr(room)))
            assert f"dispatch {dispatch.id}" in line and f"running@{daemon.id}" in line, line

            await observer.livekit.agent_dispatch.delete_dispatch(dispatch.id, room)
            await async_wait_until(lambda: _bots_are(observer, room, 0), 30, "the bot left", 0.1)
            ended = await async_wait_until(lambda: _ended(observer, room), 30, "session_ended")
            assert ended.reason == "dispatch_ended" and not ended.rejoin, ended
            assert await daemon_desired(observer, room) is None
            assert await _bots_are(observer, room, 0)
            assert await daemon.metric('room_supervisor_dispatch_jobs_total{outcome="terminated"}') == 1
        finally:
            await caller.leave()
        await daemon.sigterm_exits(0)


async def daemon_desired(observer: Observer, room: str):
    from supervisor.control import Control

    return await Control(observer.redis, observer.keys).get(room)


async def _ended(observer: Observer, room: str) -> SessionEnded | None:
    ends = [r for r in await observer.records(room) if isinstance(r, SessionEnded)]
    return ends[-1] if ends else None


async def test_a_token_with_room_configuration_agents_brings_the_bot(tmp_path, redis_url, livekit_server):
    """The first participant's token names our agent (``RoomConfiguration.agents``): connecting creates the room
    and LiveKit dispatches the job to the daemon."""
    agent_name = f"rs-test-{uuid.uuid4().hex[:6]}"
    room_name = f"token-{uuid.uuid4().hex[:8]}"
    daemon = _dispatching(tmp_path, redis_url, livekit_server.url, agent_name)
    token = (lkapi.AccessToken(API_KEY, API_SECRET).with_identity("caller")
             .with_grants(lkapi.VideoGrants(room_join=True, room=room_name))
             .with_room_config(lkapi.RoomConfiguration(agents=[lkapi.RoomAgentDispatch(agent_name=agent_name)]))
             .to_jwt())
    room = rtc.Room()
    async with observing(daemon) as observer:
        daemon.start()
        await _registered(daemon)
        await room.connect(livekit_server.url, token)
        try:
            print(f"\ntoken dispatch -> bot in the room: {await _one_bot(observer, room_name, 60):.2f}s")
            await observer.wait_connected([room_name], timeout=30)
            assert [s.cause for s in await _started(observer, room_name)] == ["dispatch"]
        finally:
            await room.disconnect()
        await daemon.sigterm_exits(0)


async def test_automatic_dispatch_gives_every_new_room_one_bot(tmp_path, redis_url, fresh_livekit):
    """``agent_name`` empty: LiveKit gives the daemon a job for every new room (a private server: every room
    on it gets our bot)."""
    daemon = _dispatching(tmp_path, redis_url, fresh_livekit.url, "")
    rooms = [f"auto-{uuid.uuid4().hex[:8]}-{i}" for i in range(2)]
    callers = [Participant(fresh_livekit.url, room, "caller") for room in rooms]
    async with observing(daemon) as observer:
        daemon.start()
        await _registered(daemon)
        try:
            for caller in callers:
                await caller.join()
            for room in rooms:
                print(f"\nautomatic dispatch -> bot in {room}: {await _one_bot(observer, room, 60):.2f}s")
            await observer.wait_connected(rooms, timeout=30)
            for room in rooms:
                started = await _started(observer, room)
                assert [s.cause for s in started] == ["dispatch"] and started[0].dispatch, started
                assert await _bots_are(observer, room, 1)
        finally:
            for caller in callers:
                await caller.leave()
        await daemon.sigterm_exits(0)


@pytest.mark.slow
@pytest.mark.timeout(480)
async def test_two_workers_share_dispatched_rooms_and_a_killed_ones_rooms_are_rejoined(tmp_path, redis_url,
                                                                                        livekit_server):
    """20 rooms dispatched through the API while two daemons are registered: LiveKit spreads the jobs over both,
    no room ever has two bots (LiveKit's participant lists polled all along). Then one daemon is killed with
    SIGKILL: the other rejoins each of its rooms when the lease expires (``session_started`` cause ``rejoin``)."""
    agent_name = f"rs-test-{uuid.uuid4().hex[:6]}"
    rooms = [f"spread-{uuid.uuid4().hex[:6]}-{i}" for i in range(20)]
    first = _dispatching(tmp_path / "a", redis_url, livekit_server.url, agent_name, daemon_id="worker-a")
    second = _dispatching(tmp_path / "b", redis_url, livekit_server.url, agent_name, daemon_id="worker-b")
    async with observing(first, second) as observer, BotWatch(observer, rooms) as watch:
        first.start()
        second.start()
        await asyncio.gather(_registered(first), _registered(second))
        for room in rooms:
            await observer.livekit.room.create_room(lkapi.CreateRoomRequest(name=room))
            await observer.livekit.agent_dispatch.create_dispatch(
                lkapi.CreateAgentDispatchRequest(agent_name=agent_name, room=room))
        await observer.wait_connected(rooms, timeout=180)
        owners = await async_wait_until(lambda: _held_by(observer, rooms), 60, "every room held")
        counts = {d: list(owners.values()).count(d) for d in ("worker-a", "worker-b")}
        print(f"\n20 dispatched rooms: {counts}")
        assert all(counts.values()), counts  # LiveKit gave both workers jobs

        victim = first if counts["worker-a"] else second
        survivor = second if victim is first else first
        theirs = [room for room, owner in owners.items() if owner == victim.id]
        seqs = {room: (await observer.records(room))[-1].seq for room in theirs}
        t0 = time.monotonic()
        victim.kill9()
        await observer.wait_connected(theirs, timeout=120, after=seqs)
        print(f"kill -9 of {victim.id}: its {len(theirs)} rooms rejoined by {survivor.id} in "
              f"{time.monotonic() - t0:.2f}s (lease_ttl 3 s)")
        for room in theirs:
            fresh = [s for s in await _started(observer, room) if s.seq > seqs[room]]
            assert [s.cause for s in fresh] == ["rejoin"], fresh
        await async_wait_until(lambda: _all_one(observer, rooms), 60, "one bot in every room", 0.2)
        await watch.stop()
        assert watch.polls > 10
        assert watch.duplicates == [], watch.duplicates[:3]
        await survivor.sigterm_exits(0)


async def _held_by(observer: Observer, rooms: list[str]) -> dict[str, str] | None:
    held = {room: view["daemon"] for room, view in (await observer.held_rooms()).items()}
    return held if set(rooms) <= set(held) else None


async def _all_one(observer: Observer, rooms: list[str]) -> bool:
    return all(len(b) == 1 for b in (await observer.bots_by_room(rooms)).values())
