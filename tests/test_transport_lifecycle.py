"""Step 4: reconnects, quick leave/rejoin, hostile user handlers, failing pipelines, server-side endings."""

from __future__ import annotations

import asyncio

import pytest
from livekit import api, rtc

from eventstore.projections.base import fold
from eventstore.projections.participants import PARTICIPANTS
from eventstore.records import tag_of
from harness.livekit_server import API_KEY, API_SECRET
from harness.util import async_wait_until

import tests.pipelines as test_pipelines

pytestmark = [pytest.mark.livekit, pytest.mark.slow, pytest.mark.timeout(150)]


async def test_full_reconnect_is_recorded_and_nobody_leaves(make_bot, participant_factory):
    bot = await make_bot()
    alice = await participant_factory("alice")
    await alice.publish_tone()
    await bot.wait_for("audio_track_subscribed", participant_id="alice")
    room: rtc.Room = test_pipelines.TRANSPORTS[bot.room]._client.room
    await room.simulate_scenario(rtc.SimulateScenarioKind.SIMULATE_FULL_RECONNECT)
    await bot.wait_for("reconnected", timeout=60)
    records = await bot.records()
    types = [tag_of(r) for r in records]
    assert types.index("reconnecting") < types.index("reconnected")
    [reconnected] = [r for r in records if tag_of(r) == "reconnected"]
    assert "alice" in reconnected.participants
    state = fold(PARTICIPANTS, bot.room, records)
    assert "alice" in state.present
    assert state.present["alice"].joined_at == next(r.ts for r in records if tag_of(r) == "participant_connected")
    assert not state.left and state.counters.rejoins == 0 and state.counters.leaves == 0
    assert state.people["alice"].joins == 1


async def test_quick_leave_and_rejoin_is_recorded_in_order(make_bot, participant_factory):
    bot = await make_bot()
    alice = await participant_factory("alice")
    await bot.wait_for("participant_connected", participant_id="alice")
    await alice.leave()
    await alice.join()
    await bot.wait_for("participant_connected", participant_id="alice", count=2)
    seq = [(tag_of(r), r.participant_id) for r in await bot.records()
           if tag_of(r) in ("participant_connected", "participant_disconnected", "participant_left")]
    assert seq == [("participant_connected", "alice"), ("participant_disconnected", "alice"),
                   ("participant_left", "alice"), ("participant_connected", "alice")]
    calls = [(e, a) for e, a in bot.handler_calls
             if e in ("on_participant_connected", "on_participant_disconnected", "on_participant_left")]
    assert [e for e, _ in calls] == ["on_participant_connected", "on_participant_disconnected",
                                     "on_participant_left", "on_participant_connected"]


async def test_raising_and_slow_user_handlers_lose_and_delay_nothing(make_bot, participant_factory):
    bot = await make_bot("hostile_handlers")
    alice = await participant_factory("alice")
    for i in range(5):
        await alice.send_text(f"message {i}", topic="chat")
    for i in range(5):
        await bot.wait_for("data_received", data=f"message {i}".encode(), timeout=10)
    datas = [r.data for r in await bot.records() if tag_of(r) == "data_received"]
    assert datas == [f"message {i}".encode() for i in range(5)]
    outcome = await bot.stop()
    assert outcome.reason == "drained"
    assert {"before_disconnect", "disconnected", "session_ended"} <= set(await bot.types())


async def test_bot_removed_by_server_ends_session_without_rejoin(make_bot, livekit_server):
    bot = await make_bot()
    async with api.LiveKitAPI(livekit_server.api_url, API_KEY, API_SECRET) as lk:
        await lk.room.remove_participant(api.RoomParticipantIdentity(room=bot.room, identity=bot.identity))
    outcome = await bot.wait_outcome()
    assert (outcome.reason, outcome.rejoin) == ("removed", False)
    records = await bot.records()
    assert [r.reason for r in records if tag_of(r) == "disconnected"] == ["PARTICIPANT_REMOVED"]
    [ended] = [r for r in records if tag_of(r) == "session_ended"]
    assert (ended.reason, ended.rejoin) == ("removed", False)


async def test_pipeline_that_raises_ends_its_session(make_bot, participant_factory):
    bot = await make_bot("raising")
    alice = await participant_factory("alice")
    await alice.publish_tone()
    outcome = await bot.wait_outcome(timeout=60)
    assert outcome.reason == "pipeline_error" and outcome.rejoin
    assert "fails on the first audio frame" in outcome.detail
    types = await bot.types()
    assert types.count("session_ended") == 1
    assert set(types[types.index("session_ended"):]) <= {"session_ended", "call_state_updated"}


async def test_broken_factory_and_unknown_pipeline_are_recorded(make_bot):
    bot = await make_bot("broken_factory", start=False)
    await bot.writer.start()
    outcome = await asyncio.wait_for(__import__("transport.session", fromlist=["x"]).run_session(
        bot.spec, bot.writer, bot.stop_event), 30)
    assert outcome.reason == "pipeline_error" and "cannot build" in outcome.detail
    bot2 = await make_bot("no_such_module:factory", start=False)
    await bot2.writer.start()
    outcome2 = await __import__("transport.session", fromlist=["x"]).run_session(bot2.spec, bot2.writer,
                                                                                 bot2.stop_event)
    assert (outcome2.reason, outcome2.rejoin) == ("pipeline_error", False)
    assert await bot2.writer.flush(10)
    types = await bot.types()
    assert types.count("session_started") == 2 and types.count("session_ended") == 2
    assert "connected" not in types


async def test_garbage_data_messages_are_recorded_byte_exact(make_bot, participant_factory):
    bot = await make_bot()
    alice = await participant_factory("alice")
    await bot.wait_for("participant_connected", participant_id="alice")
    payloads = [b"\xff\xfe\x00invalid utf-8 \xc3", bytes(range(256)) * 56, "ünïcødé ✓ {}:*".encode(),
                b"\x00"]
    for i, payload in enumerate(payloads):
        await alice.send_bytes(payload, topic=f"t{i} {{weird}}:*")
    records = await bot.wait_for("data_received", count=len(payloads), timeout=20)
    assert [r.data for r in records] == payloads
    assert [r.topic for r in records] == [f"t{i} {{weird}}:*" for i in range(len(payloads))]


async def test_a_cancelled_session_takes_its_bot_out_of_the_room(make_bot, livekit_server):
    bot = await make_bot()
    bot.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bot.task
    async with api.LiveKitAPI(livekit_server.api_url, API_KEY, API_SECRET) as lk:
        async def gone():
            res = await lk.room.list_participants(api.ListParticipantsRequest(room=bot.room))
            return all(p.identity != bot.identity for p in res.participants)

        await async_wait_until(gone, 30, "the cancelled bot to leave the room", interval=0.2)
    [ended] = [r for r in await bot.records() if tag_of(r) == "session_ended"]
    assert (ended.reason, ended.rejoin) == ("cancelled", False)
