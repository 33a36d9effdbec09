"""The audio a session's pipeline hears and speaks, and the cheap way to get it there.

Where a room's CPU goes (``docs/capacity.md``): per 10 ms of audio, one FFI event from the rtc SDK, one pipecat
frame through every processor, one capture back. :class:`AudioFormat` sets the rates and the frame length (the
daemon's ``[audio]`` settings: 16 kHz in, 24 kHz out and 20 ms frames, what voice bots use), and
:class:`AudioInput` opens each subscribed track the way the format says:

- the rtc SDK resamples and frames natively (``rtc.AudioStream(sample_rate=, num_channels=1,
  frame_size_ms=)``), so Python sees one event per frame at the pipeline's rate, not one per 10 ms at 48 kHz;
- a pipeline that does not take input audio (``listen``, or a factory with ``audio_in = False``) gets no
  ``AudioStream`` at all: the subscription is still made and recorded, but nothing is read from the track
  (pipecat creates a stream anyway and queues its frames without bound when audio input is off);
- a pipeline that never speaks (``listen``, or a factory with ``audio_out = False``) publishes no audio track:
  pipecat always publishes one, and the rtc SDK then encodes silence into Opus for it, in every room.

And :func:`keep_own_events` stops a cost that grows with the rooms in one process: the rtc SDK hands every FFI
event to every ``Room``'s listen task, which waits on its own queue for each, so one room's audio capture
callback (every 40 ms) or participant event woke every other room in the daemon.
"""

from __future__ import annotations

import logging
from typing import Any

from livekit import rtc
from livekit.rtc._ffi_client import FfiClient
from pipecat.transports.livekit.transport import LiveKitParams, _ParticipantAudioMixer

from .audio_format import AudioFormat as AudioFormat  # re-exported: what sessions and the bench build from

log = logging.getLogger("transport")

class AudioInput:
    """How the transport's client opens subscribed audio tracks (see the module docstring)."""

    def __init__(self, audio: AudioFormat, *, enabled: bool, publish: bool = True) -> None:
        self.audio = audio
        self.enabled = enabled  # read subscribed audio (the pipeline takes input audio)
        self.publish = publish  # publish the bot's audio track (the pipeline speaks)

    @classmethod
    def for_params(cls, params: LiveKitParams) -> AudioInput:
        """What ``params`` ask for, in 20 ms frames (for a transport built without a format)."""
        fmt = AudioFormat(in_sample_rate=params.audio_in_sample_rate or AudioFormat.in_sample_rate,
                          out_sample_rate=params.audio_out_sample_rate or AudioFormat.out_sample_rate)
        return cls(fmt, enabled=params.audio_in_enabled, publish=params.audio_out_enabled)

    def stream(self, track: rtc.Track) -> rtc.AudioStream | None:
        """The stream to read ``track`` through, or None when the pipeline takes no input audio."""
        if not self.enabled:
            return None
        return rtc.AudioStream(track, sample_rate=self.audio.in_sample_rate, num_channels=1,
                               frame_size_ms=self.audio.frame_ms)

    def mixer(self) -> _ParticipantAudioMixer:
        """pipecat's mixer of the participants' audio, cutting chunks of one frame (its default re-cuts to 10 ms)."""
        return _ParticipantAudioMixer(sample_rate=self.audio.in_sample_rate, num_channels=1,
                                      chunk_ms=self.audio.frame_ms)



def publish_no_audio(room: rtc.Room) -> None:
    """Make ``room``'s participant skip publishing pipecat's own audio track (``pipecat-audio``): call it once
    ``room`` is connected, before pipecat publishes (its connect does that right after ``room.connect``)."""
    participant = room.local_participant
    publish = participant.publish_track

    async def publish_track(track: Any, options: Any = None) -> Any:
        if isinstance(track, rtc.LocalAudioTrack) and track.name == PIPECAT_AUDIO_TRACK:
            return None  # pipecat does not use what publish_track returns
        return await publish(track, options) if options is not None else await publish(track)

    participant.publish_track = publish_track  # type: ignore[method-assign]


PIPECAT_AUDIO_TRACK = "pipecat-audio"  # the name pipecat's LiveKit client gives the bot's audio track


def keep_own_events(room: rtc.Room) -> bool:
    """Narrow what ``room``'s listen task receives to its own room events, RPC invocations and the callbacks its
    participant's requests wait for; audio capture callbacks and other rooms' events no longer wake it.

    Call it once ``room`` is connected. It replaces the filter of the room's subscription to the SDK's event
    queue (SDK internals, checked here): False, changing nothing, when they are not as expected."""
    own = getattr(room, "_ffi_queue", None)
    handle = getattr(getattr(room, "_ffi_handle", None), "handle", None)
    queue = getattr(FfiClient.instance, "queue", None)
    subscribers = getattr(queue, "_subscribers", None)
    lock = getattr(queue, "_lock", None)
    if own is None or handle is None or not isinstance(subscribers, list) or lock is None:
        return False

    def wanted(event: Any) -> bool:
        which = event.WhichOneof("message")
        if which == "room_event":
            return event.room_event.room_handle == handle
        return which not in _NEVER_A_ROOMS

    with lock:
        for i, entry in enumerate(subscribers):
            if isinstance(entry, tuple) and len(entry) == 3 and entry[0] is own:
                subscribers[i] = (entry[0], entry[1], wanted)
                return True
    return False


# what a Room's listen task never uses: media frames (streams have their own subscriptions) and the completions
# of audio captures (their AudioSource waits for them on its own subscription)
_NEVER_A_ROOMS = frozenset({"audio_stream_event", "video_stream_event", "capture_audio_frame"})
