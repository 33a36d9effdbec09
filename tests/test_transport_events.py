"""Step 4: every documented LiveKitTransport event lands in the room's stream, from a real LiveKit room, and
user handlers receive exactly the documented arguments. One test per documented event."""

from __future__ import annotations

import pytest
from livekit import api

from eventstore.records import tag_of
from harness.livekit_server import API_KEY, API_SECRET


pytestmark = [pytest.mark.livekit, pytest.mark.slow, pytest.mark.timeout(120)]


def by_type(records, tag):
    return [r for r in records if tag_of(r) == tag]


async def test_event_connected(bot):
    [rec] = await bot.wait_for("connected")
    assert rec.identity == bot.identity and rec.participant_sid.startswith("PA_")
    assert rec.session == bot.spec.session_id and rec.room == bot.room
    assert await bot.wait_handler("on_connected") == ()
    types = await bot.types()
    assert types.index("session_started") < types.index("connected")


async def test_event_before_disconnect(bot):
    outcome = await bot.stop()
    assert outcome.reason == "drained" and not outcome.rejoin
    types = await bot.types()
    assert types.index("before_disconnect") < types.index("disconnected") < types.index("session_ended")
    assert await bot.wait_handler("on_before_disconnect") == ()


async def test_event_disconnected(bot, livekit_server):
    # The server deletes the room: LiveKit's reason is recorded, and the pipeline (which pipecat would keep
    # running) ends.
    async with api.LiveKitAPI(livekit_server.api_url, API_KEY, API_SECRET) as lk:
        await lk.room.delete_room(api.DeleteRoomRequest(room=bot.room))
    outcome = await bot.wait_outcome()
    assert (outcome.reason, outcome.rejoin) == ("room_deleted", False)
    [rec] = by_type(await bot.records(), "disconnected")
    assert rec.reason == "ROOM_DELETED" and rec.local is False
    assert await bot.wait_handler("on_disconnected") == ()
    assert "before_disconnect" not in await bot.types()


async def test_event_call_state_updated(bot):
    await bot.wait_for("call_state_updated", state="joined")
    await bot.stop()
    states = [r.state for r in by_type(await bot.records(), "call_state_updated")]
    assert states == ["joining", "joined", "leaving", "left"]
    received = [a[0] for e, a in bot.handler_calls if e == "on_call_state_updated"]
    assert received == states


async def test_event_first_participant_joined(bot, participant_factory):
    await participant_factory("alice")
    await bot.wait_for("participant_connected", participant_id="alice")  # the bot learns of joins in its own time
    await participant_factory("bob")
    [rec] = await bot.wait_for("first_participant_joined")
    assert rec.participant_id == "alice" and rec.participant_sid.startswith("PA_")
    assert await bot.wait_handler("on_first_participant_joined") == ("alice",)
    await bot.wait_for("participant_connected", participant_id="bob")
    assert len(by_type(await bot.records(), "first_participant_joined")) == 1


async def test_event_participant_connected(bot, participant_factory):
    await participant_factory("alice")
    [rec] = await bot.wait_for("participant_connected", participant_id="alice")
    assert rec.participant_sid.startswith("PA_") and rec.kind == "standard"
    assert await bot.wait_handler("on_participant_connected", "alice") == ("alice",)


async def test_event_participant_disconnected(bot, participant_factory):
    alice = await participant_factory("alice")
    await bot.wait_for("participant_connected", participant_id="alice")
    await alice.leave()
    [rec] = await bot.wait_for("participant_disconnected", participant_id="alice")
    assert rec.reason == "CLIENT_INITIATED" and rec.participant_sid.startswith("PA_")
    assert await bot.wait_handler("on_participant_disconnected", "alice") == ("alice",)


async def test_event_participant_left(bot, participant_factory):
    alice = await participant_factory("alice")
    await bot.wait_for("participant_connected", participant_id="alice")
    await alice.leave()
    [rec] = await bot.wait_for("participant_left", participant_id="alice")
    assert rec.reason == "disconnected" and rec.disconnect_reason == "CLIENT_INITIATED"
    assert await bot.wait_handler("on_participant_left") == ("alice", "disconnected")
    types = await bot.types()
    assert types.index("participant_disconnected") < types.index("participant_left")


async def test_event_audio_track_subscribed(bot, participant_factory):
    alice = await participant_factory("alice")
    sid = await alice.publish_tone()
    [rec] = await bot.wait_for("audio_track_subscribed", participant_id="alice")
    assert rec.track_sid == sid
    assert await bot.wait_handler("on_audio_track_subscribed") == ("alice",)


async def test_event_audio_track_unsubscribed(bot, participant_factory):
    alice = await participant_factory("alice")
    sid = await alice.publish_tone()
    await bot.wait_for("audio_track_subscribed", participant_id="alice")
    await alice.unpublish_audio()
    [rec] = await bot.wait_for("audio_track_unsubscribed", participant_id="alice")
    assert rec.track_sid == sid
    assert await bot.wait_handler("on_audio_track_unsubscribed") == ("alice",)


async def test_event_video_track_subscribed(bot, participant_factory):
    alice = await participant_factory("alice")
    sid = await alice.publish_video()
    [rec] = await bot.wait_for("video_track_subscribed", participant_id="alice")
    assert rec.track_sid == sid and rec.video_source == "camera"
    assert await bot.wait_handler("on_video_track_subscribed") == ("alice",)


async def test_event_video_track_unsubscribed(bot, participant_factory):
    alice = await participant_factory("alice")
    sid = await alice.publish_video()
    await bot.wait_for("video_track_subscribed", participant_id="alice")
    await alice.unpublish_video()
    [rec] = await bot.wait_for("video_track_unsubscribed", participant_id="alice")
    assert rec.track_sid == sid and rec.video_source == "camera"
    assert await bot.wait_handler("on_video_track_unsubscribed") == ("alice",)


async def test_event_data_received(bot, participant_factory):
    alice = await participant_factory("alice")
    await bot.wait_for("participant_connected", participant_id="alice")
    await alice.send_text("hello bot", topic="chat")
    await alice.send_bytes(b"\x00\xff\x10binary", topic="bin", reliable=False)
    [text] = await bot.wait_for("data_received", data=b"hello bot")
    assert (text.participant_id, text.topic, text.reliable) == ("alice", "chat", True)
    assert text.participant_sid.startswith("PA_")
    assert await bot.wait_handler("on_data_received", b"hello bot", "alice") == (b"hello bot", "alice")
    [binary] = await bot.wait_for("data_received", data=b"\x00\xff\x10binary")
    assert (binary.topic, binary.reliable) == ("bin", False)
