"""Smoke: a pipecat LiveKitTransport echo bot and a real rtc participant meet in a real room."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.livekit, pytest.mark.slow]


async def test_echo_bot_hears_participant_and_answers(participant_factory, bot_factory):
    bot = await bot_factory("echo-bot")
    alice = await participant_factory("alice")
    await alice.publish_tone(440.0)

    # The bot echoes alice's tone back; alice hears it from the bot (>= 0.5 s of loud audio).
    await alice.wait_for_audio("echo-bot", frames=50, timeout=30)

    # Reliable data with a topic, text and binary, reaches the bot's on_data_received.
    await alice.send_text("hello bot", topic="smoke")
    await alice.send_bytes(b"\x00\x01\xfe\xff", topic="smoke-bin")
    data, sender = await bot.wait_for_data(b"hello bot", timeout=15)
    assert sender == "alice"
    data, sender = await bot.wait_for_data(b"\x00\x01\xfe\xff", timeout=15)
    assert sender == "alice"
    assert "participant_connected:alice" in bot.events or any("alice" in e for e in bot.events)


async def test_livekit_restart_keeps_url_and_participants_rejoin(fresh_livekit, participant_factory, room_name):
    url = fresh_livekit.url
    alice = await participant_factory("alice", url=url)
    bob = await participant_factory("bob", url=url)
    await alice.publish_tone(440.0)
    await bob.wait_for_audio("alice", frames=20, timeout=20)
    await alice.unpublish_audio()

    fresh_livekit.kill()
    fresh_livekit.start()
    assert fresh_livekit.url == url

    await alice.rejoin()
    await bob.rejoin()
    await alice.publish_tone(880.0)
    await bob.wait_for_audio("alice", frames=20, timeout=20)
    await alice.wait_for_participant("bob")  # else the data may arrive with an unknown sender (None)
    await bob.send_text("back", topic="restart")
    got = await alice.wait_for_data(lambda r: r.payload == b"back" and r.topic == "restart")
    assert got.sender == "bob" and got.reliable
