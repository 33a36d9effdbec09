"""Step 10: the cheaper audio path, in real LiveKit rooms.

- ``echo`` still echoes with the daemon's default format (16 kHz in, 24 kHz out, 20 ms frames) and with others;
  input frames reach the pipeline at the format's rate and length (the rtc SDK resamples and frames natively);
- ``listen`` records the subscription but opens no ``AudioStream`` and queues nothing, and publishes no audio
  track (the rtc SDK would encode silence for it);
- each bot's rtc room hears only its own room's events (audio capture callbacks and other rooms' events no
  longer wake every room in the process), and still records everything of its own room;
- the ``[audio]`` and ``daemon.load_threshold`` settings refuse garbage with the setting's name.
"""

from __future__ import annotations

import pytest
from harness.util import async_wait_until
from livekit.rtc._ffi_client import FfiClient

import tests.pipelines as test_pipelines
from supervisor.settings import SettingsError, load_settings
from transport.audio import AudioFormat

pytestmark = [pytest.mark.livekit, pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.mark.parametrize("audio", [AudioFormat(), AudioFormat(48000, 48000, 10), AudioFormat(24000, 16000, 40)],
                         ids=["16k-24k-20ms", "48k-48k-10ms", "24k-16k-40ms"])
async def test_echo_comes_back_and_the_pipeline_hears_the_format(make_bot, participant_factory, audio):
    bot = await make_bot("echo_probe", audio=audio)
    alice = await participant_factory("alice")
    await alice.publish_tone()
    heard = await alice.wait_for_audio(bot.identity, frames=50, timeout=30)
    assert heard >= 50  # a speaking pipeline publishes its track
    [probe] = test_pipelines.PROCESSORS[bot.room]
    await async_wait_until(lambda: len(probe.frames) >= 20, 20, "20 input frames in the pipeline")
    expected_bytes = audio.in_sample_rate * audio.frame_ms // 1000 * 2
    assert {rate for rate, _ in probe.frames} == {audio.in_sample_rate}
    # the SDK frames natively; the mixer keeps one frame per chunk (pipecat's own would re-cut to 10 ms)
    assert {size for _, size in probe.frames[5:]} == {expected_bytes}, probe.frames[:10]
    transport = test_pipelines.TRANSPORTS[bot.room]
    assert transport._params.audio_out_sample_rate == audio.out_sample_rate


async def test_listen_records_the_subscription_and_reads_no_audio(make_bot, participant_factory):
    bot = await make_bot("listen_probe")
    alice = await participant_factory("alice")
    await alice.publish_tone()
    await bot.wait_for("audio_track_subscribed", participant_id="alice")
    await alice.send_text("after the tone", topic="t")  # the bot has had the track for as long as this takes
    await bot.wait_for("data_received", participant_id="alice")
    client = test_pipelines.TRANSPORTS[bot.room]._client
    assert "alice" in client._audio_tracks  # subscribed: LiveKit sends and decodes it, nothing reads it
    assert client._audio_streams == {} and client._audio_queue.qsize() == 0
    [discard] = test_pipelines.PROCESSORS[bot.room]
    assert discard.dropped == 0
    seen = await alice.wait_for_participant(bot.identity)
    await alice.send_text("a second one", topic="t")  # had the bot published a track, alice would know by now
    await bot.wait_for("data_received", participant_id="alice", count=2)
    assert list(seen.track_publications) == []
    await alice.unpublish_audio()
    await bot.wait_for("audio_track_unsubscribed", participant_id="alice")


async def test_each_room_hears_only_its_own_events(redis_url, livekit_server, participant_factory, room_name):
    from botsession import BotSession

    names = [f"{room_name}-{i}" for i in range(2)]
    bots = [await BotSession(redis_url, livekit_server.url, name, "echo_probe").start() for name in names]
    try:
        rooms = [test_pipelines.TRANSPORTS[b.room]._client.room for b in bots]
        filters = {id(q): f for q, _, f in FfiClient.instance.queue._subscribers}
        for room in rooms:
            wanted = filters[id(room._ffi_queue)]
            assert wanted is not None and wanted.__name__ == "wanted"
        alice = await participant_factory("alice", room=names[0])
        bob = await participant_factory("bob", room=names[1])
        for who in (alice, bob):
            await who.publish_tone()
        await alice.wait_for_audio(bots[0].identity, frames=30, timeout=30)  # captures go on: echo works
        await bob.wait_for_audio(bots[1].identity, frames=30, timeout=30)
        await bots[0].wait_for("audio_track_subscribed", participant_id="alice")
        await bots[1].wait_for("audio_track_subscribed", participant_id="bob")
        for bot, other in ((bots[0], "bob"), (bots[1], "alice")):
            assert other not in {getattr(r, "participant_id", None) for r in await bot.records()}
    finally:
        for bot in bots:
            await bot.aclose()


@pytest.mark.parametrize("env, setting", [
    ({"RS_AUDIO_FRAME_MS": "30"}, "audio.frame_ms"),
    ({"RS_AUDIO_IN_SAMPLE_RATE": "22050"}, "audio.in_sample_rate"),
    ({"RS_AUDIO_OUT_SAMPLE_RATE": "lots"}, "audio.out_sample_rate"),
    ({"RS_DAEMON_LOAD_THRESHOLD": "0"}, "daemon.load_threshold"),
    ({"RS_DAEMON_LOAD_THRESHOLD": "high"}, "daemon.load_threshold"),
])
def test_audio_and_load_settings_refuse_garbage(env, setting):
    with pytest.raises(SettingsError) as caught:
        load_settings(environ=env)
    assert caught.value.setting == setting and "environment variable" in str(caught.value)
