"""RecordingLiveKitTransport: pipecat's ``LiveKitTransport`` that writes every event it fires to the log.

Why a subclass and not a wrapper: every documented event reaches user handlers through one method,
``_call_event_handler``; overriding it records exactly what user code receives, with the same arguments, in
the same order, and before any user handler runs (so a raising or slow handler can neither lose nor delay a
record). A wrapper could only register handlers of its own, which pipecat runs as separate tasks in no
guaranteed order. The subclass also

- attaches listeners to the rtc ``Room`` for what pipecat drops (SIDs, real disconnect reasons, data topic
  and kind, video source) and for what it does not surface at all (``reconnecting``/``reconnected``, and
  LiveKit text and byte streams of every topic: :mod:`transport.streams`, at most ``max_stream_bytes`` of each
  stream's content kept);
- fires ``on_call_state_updated(transport, state)``, which pipecat registers but never fires, whenever the
  call-state machine changes ``state`` (records it too);
- sets :attr:`ended` when the server ends the bot's connection (room closed or deleted, bot removed,
  connection lost for good), because pipecat then keeps the pipeline running; the session ends it;
- opens subscribed audio the cheap way :mod:`transport.audio` describes (native resampling and framing, no
  stream at all for a pipeline that takes no input audio).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from livekit import rtc
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.transports.livekit.transport import (LiveKitInputTransport, LiveKitParams, LiveKitTransport,
                                                  LiveKitTransportClient)

from eventstore import records as R

from .audio import AudioInput, keep_own_events, publish_no_audio
from .recorder import EventRecorder
from .rtc_details import RtcDetails
from .streams import BOT_LEFT, MAX_STREAM_BYTES, StreamRecorder

log = logging.getLogger("transport")


class RecordingClient(LiveKitTransportClient):
    """pipecat's client, plus our rtc listeners and knowledge of who asked for the disconnect."""

    def __init__(self, *args: Any, details: RtcDetails, transport: "RecordingLiveKitTransport",
                 audio_input: AudioInput | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._details = details
        self._owner = transport
        self._audio_input = audio_input

    async def setup(self, setup: FrameProcessorSetup) -> None:
        first = self._task_manager is None
        await super().setup(setup)
        if first:
            self.room.connect = _shielded_connect(self.room, self._audio_input)  # type: ignore[method-assign]
            self._details.attach(self.room)
            self._owner.streams.attach(self.room)
            self.room.on("reconnecting", self._owner._on_rtc_reconnecting)
            self.room.on("reconnected", self._owner._on_rtc_reconnected)
            self.room.on("disconnected", self._owner._on_rtc_disconnected)

    async def _async_on_track_subscribed(self, track: rtc.Track, publication: rtc.RemoteTrackPublication,
                                         participant: rtc.RemoteParticipant) -> None:
        """pipecat's handler, except how an audio track is read (:class:`transport.audio.AudioInput`)."""
        if track.kind != rtc.TrackKind.KIND_AUDIO:
            await super()._async_on_track_subscribed(track, publication, participant)
            return
        assert self._task_manager is not None
        await self._close_audio_stream(participant.identity)  # a re-publish replaces the earlier stream
        self._audio_tracks[participant.identity] = track
        stream = self._audio_input.stream(track)
        if stream is not None:
            task = self._task_manager.create_task(self._process_audio_stream(stream, participant.identity),
                                                  f"{self}::_process_audio_stream")
            self._audio_streams[participant.identity] = (stream, task)
        await self._callbacks.on_audio_track_subscribed(participant.identity)

    async def disconnect(self) -> None:
        if self._connected and self._disconnect_counter <= 1:
            self._owner.local_stop = True
        await super().disconnect()


_LEAVING: set[asyncio.Future[Any]] = set()  # connects cut short, still finishing so that they can leave


def _shielded_connect(room: rtc.Room, audio: AudioInput) -> Any:
    """``room.connect`` that a cancellation cannot cut in the middle.

    Once the server has accepted a connect, the rtc FFI waits for the Python side to say it is ready for room
    events; a ``connect()`` cancelled in between (a drain or a leave while the bot is still joining) never says
    it, and the FFI then panics and sends SIGTERM to the whole process, ending every call in it. So the real
    connect runs in a task of its own: a cancelled caller gets its ``CancelledError`` at once, while the
    connect finishes in the background and the bot then leaves.

    Once connected, the room hears only its own events, and a pipeline that never speaks publishes no audio
    track (:mod:`transport.audio`)."""
    original = room.connect

    async def connect(*args: Any, **kwargs: Any) -> Any:
        task = asyncio.ensure_future(original(*args, **kwargs))
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            _LEAVING.add(task)
            task.add_done_callback(lambda t: _leave_after(room, t))
            raise
        if not keep_own_events(room):
            log.debug("the rtc SDK's event queue is not as expected; every room still wakes on every event")
        if not audio.publish:
            publish_no_audio(room)
        return result

    return connect


def _leave_after(room: rtc.Room, connect: asyncio.Future[Any]) -> None:
    _LEAVING.discard(connect)
    if connect.cancelled() or connect.exception() is not None:
        return
    leave = asyncio.ensure_future(room.disconnect())
    _LEAVING.add(leave)
    leave.add_done_callback(_LEAVING.discard)


class RecordingLiveKitTransport(LiveKitTransport):
    """``max_stream_bytes``: how much of one text or byte stream's content its record keeps (the rest is counted
    in ``size`` and the record says ``truncated``)."""

    def __init__(self, url: str, token: str, room_name: str, recorder: EventRecorder,
                 params: LiveKitParams | None = None, *, max_stream_bytes: int = MAX_STREAM_BYTES,
                 audio_input: AudioInput | None = None, **kwargs: Any) -> None:
        super().__init__(url, token, room_name, params, **kwargs)
        self.recorder = recorder
        self.details = RtcDetails()
        self.streams = StreamRecorder(recorder, self._spawn, self.details.sids, max_bytes=max_stream_bytes)
        self.audio_input = audio_input or AudioInput.for_params(self._params)
        self._client = RecordingClient(url, token, room_name, self._params, self._client._callbacks,
                                       self.name, details=self.details, transport=self, audio_input=audio_input)
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.local_stop = False
        self._pending: set[asyncio.Task[None]] = set()
        self.recorder.on_state_change(self._on_state_change)

    def input(self) -> LiveKitInputTransport:
        first = self._input is None
        transport = super().input()
        if first:  # pipecat's mixer would re-cut every frame to 10 ms; ours keeps the format's frame length
            transport._mixer = self.audio_input.mixer()
        return transport

    # --- the one place every documented event passes ------------------------------------------------------

    async def _call_event_handler(self, event_name: str, *args: Any, **kwargs: Any) -> None:
        if event_name == "on_call_state_updated":
            await super()._call_event_handler(event_name, *args, **kwargs)
            return
        try:
            await self._record(event_name, args)
        except Exception:
            log.exception("room=%s session=%s: cannot record %s", self.recorder.room, self.recorder.session,
                          event_name)
        await super()._call_event_handler(event_name, *args, **kwargs)

    async def _record(self, event: str, args: tuple[Any, ...]) -> None:
        emit, d = self.recorder.emit, self.details
        if event == "on_connected":
            room = self._client.room
            lp = room.local_participant
            for p in room.remote_participants.values():
                d.remember(p)
            await emit(R.Connected, identity=lp.identity, participant_sid=lp.sid,
                       participants=sorted(room.remote_participants))
        elif event == "on_disconnected":
            reason = "CLIENT_INITIATED" if self.local_stop else (d.bot_disconnect_reason or "UNKNOWN_REASON")
            await emit(R.Disconnected, reason=reason, local=self.local_stop)
        elif event == "on_before_disconnect":
            await emit(R.BeforeDisconnect)
        elif event in ("on_participant_connected", "on_first_participant_joined"):
            identity = args[0]
            cls = R.ParticipantConnected if event == "on_participant_connected" else R.FirstParticipantJoined
            extra = {"kind": d.kinds.get(identity, "")} if cls is R.ParticipantConnected else {}
            await emit(cls, participant_id=identity, participant_sid=d.sids.get(identity, ""), **extra)
        elif event == "on_participant_disconnected":
            identity = args[0]
            await emit(R.ParticipantDisconnected, participant_id=identity, participant_sid=d.sids.get(identity, ""),
                       reason=d.reasons.get(identity, ""))
        elif event == "on_participant_left":
            identity, reason = args[0], args[1]
            await emit(R.ParticipantLeft, participant_id=identity, reason=reason,
                       participant_sid=d.sids.get(identity, ""), disconnect_reason=d.reasons.get(identity, ""))
        elif event in _TRACK_EVENTS:
            cls, kind, subscribed = _TRACK_EVENTS[event]
            identity = args[0]
            info = d.track(identity, kind, subscribed)
            extra = {"video_source": info.source} if kind == "video" else {}
            await emit(cls, participant_id=identity, participant_sid=d.sids.get(identity, ""),
                       track_sid=info.track_sid, **extra)
        elif event == "on_data_received":
            data, sender = bytes(args[0]), args[1]
            info = d.data_info(sender, len(data))
            await emit(R.DataReceived, participant_id=sender, data=data, participant_sid=info.participant_sid,
                       topic=info.topic, reliable=info.reliable)

    # --- what pipecat does not surface --------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> None:
        # loop.create_task keeps FIFO order with pipecat's own handler tasks for earlier rtc events.
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.recorder.room}:{name}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _on_rtc_reconnecting(self) -> None:
        self._spawn(self.recorder.emit(R.Reconnecting), "record-reconnecting")

    def _on_rtc_reconnected(self) -> None:
        room = self._client.room
        self._spawn(self.recorder.emit(R.Reconnected, participants=sorted(room.remote_participants)),
                    "record-reconnected")

    def _on_rtc_disconnected(self, reason: int = 0) -> None:
        if not self.local_stop:
            self.end_reason = self.details.bot_disconnect_reason or "UNKNOWN_REASON"
            self.ended.set()

    def _on_state_change(self, previous: str, state: str, cause: R.Record) -> None:
        self._spawn(super()._call_event_handler("on_call_state_updated", state), "on_call_state_updated")

    async def wait_recorded(self, timeout: float = 5.0) -> None:
        """Wait for recording tasks still under way (reconnect records, call-state handlers, streams: any still
        open is ended as cut short by the bot's departure and recorded); cancel what a hanging user handler keeps
        running past ``timeout``."""
        self.streams.end_open(BOT_LEFT)
        if not self._pending:
            return
        _, late = await asyncio.wait(set(self._pending), timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            log.warning("room=%s session=%s: %d handler task(s) still running after %.1fs were cancelled",
                        self.recorder.room, self.recorder.session, len(late), timeout)
            await asyncio.gather(*late, return_exceptions=True)


_TRACK_EVENTS: dict[str, tuple[type[R.Record], str, bool]] = {
    "on_audio_track_subscribed": (R.AudioTrackSubscribed, "audio", True),
    "on_audio_track_unsubscribed": (R.AudioTrackUnsubscribed, "audio", False),
    "on_video_track_subscribed": (R.VideoTrackSubscribed, "video", True),
    "on_video_track_unsubscribed": (R.VideoTrackUnsubscribed, "video", False),
}

__all__ = ["RecordingLiveKitTransport", "LiveKitParams", "rtc"]
