"""A real LiveKit participant (``livekit.rtc``) for tests: tone and video out, audio energy and data in."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from livekit import api, rtc
from livekit.rtc._ffi_client import FfiClient
from livekit.rtc._proto import ffi_pb2

from .livekit_server import API_KEY, API_SECRET
from .util import async_wait_until

SAMPLE_RATE = 48000
FRAME_MS = 10
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000


def mint_token(room: str, identity: str, *, name: str | None = None, agent: bool = False, ttl_s: int = 3600) -> str:
    from datetime import timedelta

    grants = api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True, can_publish_data=True, agent=agent or None)
    tok = api.AccessToken(API_KEY, API_SECRET).with_identity(identity).with_name(name or identity).with_grants(grants)
    return tok.with_ttl(timedelta(seconds=ttl_s)).to_jwt()


def rms_int16(samples: np.ndarray) -> float:
    if samples.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(np.square(samples.astype(np.float64)))))


@dataclass
class Received:
    payload: bytes
    topic: str | None
    sender: str | None
    reliable: bool
    at: float = field(default_factory=time.monotonic)


class Participant:
    """Joins ``room`` on ``url`` as ``identity``. Every task it starts is cancelled in :meth:`leave`."""

    def __init__(self, url: str, room: str, identity: str):
        self.url, self.room_name, self.identity = url, room, identity
        self.room: rtc.Room | None = None
        self._tasks: set[asyncio.Task] = set()
        self._streams: list[rtc.AudioStream] = []
        self._audio: tuple[rtc.AudioSource, rtc.LocalAudioTrack, asyncio.Task] | None = None
        self._video: tuple[rtc.VideoSource, rtc.LocalVideoTrack, asyncio.Task] | None = None
        self.audio_pub_sid: str | None = None
        self.video_pub_sid: str | None = None
        # identity -> number of received 10 ms-ish frames whose RMS was above ``loud_rms``
        self.loud_frames: dict[str, int] = defaultdict(int)
        self.audio_frames: dict[str, int] = defaultdict(int)
        self.peak_rms: dict[str, float] = defaultdict(float)
        self.loud_rms = 500.0
        self.received: list[Received] = []

    # ----- lifecycle -----
    async def join(self, *, timeout: float = 20.0) -> Participant:
        if self.room is not None:
            raise RuntimeError(f"{self.identity} already joined")
        room = rtc.Room()
        room.on("track_subscribed", self._on_track_subscribed)
        room.on("data_received", self._on_data)
        self.room = room
        await asyncio.wait_for(room.connect(self.url, mint_token(self.room_name, self.identity)), timeout)
        return self

    async def leave(self) -> None:
        """Stop publishing, close streams, cancel tasks, disconnect. Safe to call twice or after a failure."""
        await self.unpublish_audio()
        await self.unpublish_video()
        for stream in self._streams:
            with contextlib.suppress(Exception):
                await stream.aclose()
        self._streams.clear()
        await self._cancel_tasks()
        room, self.room = self.room, None
        if room is not None:
            room.off("track_subscribed", self._on_track_subscribed)
            room.off("data_received", self._on_data)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(room.disconnect(), 10)
        await self._cancel_tasks()

    aclose = leave

    async def rejoin(self, **kw) -> Participant:
        await self.leave()
        return await self.join(**kw)

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self._tasks = {t for t in self._tasks if not t.done()}

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.identity}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def lp(self) -> rtc.LocalParticipant:
        if self.room is None:
            raise RuntimeError(f"{self.identity} is not in a room")
        return self.room.local_participant

    # ----- publishing -----
    async def publish_tone(self, freq_hz: float = 440.0, amplitude: float = 0.3) -> str:
        source = rtc.AudioSource(SAMPLE_RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track(f"{self.identity}-tone", source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        pub = await self.lp.publish_track(track, opts)
        task = self._spawn(self._tone_loop(source, freq_hz, amplitude), "tone")
        self._audio = (source, track, task)
        self.audio_pub_sid = pub.sid
        return pub.sid

    async def _tone_loop(self, source: rtc.AudioSource, freq_hz: float, amplitude: float) -> None:
        n = 0
        step = 2 * math.pi * freq_hz / SAMPLE_RATE
        while True:
            idx = np.arange(n, n + SAMPLES_PER_FRAME)
            samples = (amplitude * 32767 * np.sin(step * idx)).astype(np.int16)
            n += SAMPLES_PER_FRAME
            # capture_frame waits while the source's queue is full, so this runs at real time.
            await source.capture_frame(rtc.AudioFrame(samples.tobytes(), SAMPLE_RATE, 1, SAMPLES_PER_FRAME))

    async def publish_video(self, width: int = 160, height: int = 120, fps: float = 10.0) -> str:
        source = rtc.VideoSource(width, height)
        track = rtc.LocalVideoTrack.create_video_track(f"{self.identity}-video", source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)
        pub = await self.lp.publish_track(track, opts)
        task = self._spawn(self._video_loop(source, width, height, fps), "video")
        self._video = (source, track, task)
        self.video_pub_sid = pub.sid
        return pub.sid

    async def _video_loop(self, source: rtc.VideoSource, width: int, height: int, fps: float) -> None:
        frame_no = 0
        while True:
            shade = (frame_no * 8) % 256
            buf = np.full((height, width, 4), shade, dtype=np.uint8)
            source.capture_frame(rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, buf.tobytes()))
            frame_no += 1
            await asyncio.sleep(1 / fps)

    async def unpublish_audio(self) -> None:
        audio, self._audio = self._audio, None
        if audio is None:
            return
        source, _track, task = audio
        task.cancel()
        await asyncio.wait([task], timeout=5)
        if self.room is not None and self.audio_pub_sid:
            with contextlib.suppress(Exception):
                await self.lp.unpublish_track(self.audio_pub_sid)
        with contextlib.suppress(Exception):
            await source.aclose()
        self.audio_pub_sid = None

    async def unpublish_video(self) -> None:
        video, self._video = self._video, None
        if video is None:
            return
        source, _track, task = video
        task.cancel()
        await asyncio.wait([task], timeout=5)
        if self.room is not None and self.video_pub_sid:
            with contextlib.suppress(Exception):
                await self.lp.unpublish_track(self.video_pub_sid)
        self.video_pub_sid = None

    async def wait_for_participant(self, identity: str, timeout: float = 15.0) -> rtc.RemoteParticipant:
        """Wait until ``identity`` is in this room's remote participants.

        Data from a participant this client does not know yet arrives with ``participant=None``
        (rtc resolves the sender by identity), so tests that check the sender wait for this first.
        """

        def find():
            return self.room.remote_participants.get(identity) if self.room else None

        return await async_wait_until(find, timeout, f"{identity} to appear at {self.identity}")

    # ----- data -----
    async def send_text(self, text: str, topic: str, *, reliable: bool = True, to: list[str] | None = None) -> None:
        await self.lp.publish_data(text, reliable=reliable, topic=topic, destination_identities=to or [])

    async def send_bytes(self, payload: bytes, topic: str, *, reliable: bool = True, to: list[str] | None = None) -> None:
        await self.lp.publish_data(payload, reliable=reliable, topic=topic, destination_identities=to or [])

    async def send_raw_stream(self, chunks: list[bytes], *, topic: str, text: bool = True, name: str = "",
                              mime_type: str = "", attributes: dict[str, str] | None = None,
                              reason: str = "") -> str:
        """A data stream built packet by packet with the FFI's low-level requests (header, chunks, trailer), as
        another SDK, or a broken one, may send it: e.g. a text stream whose chunks are not UTF-8, which the
        normal API cannot produce. ``reason`` non-empty ends it abnormally. Returns the stream id."""
        stream_id = str(uuid.uuid4())
        header = ffi_pb2.FfiRequest()
        header.send_stream_header.header.stream_id = stream_id
        header.send_stream_header.header.timestamp = int(time.time() * 1000)
        header.send_stream_header.header.topic = topic
        header.send_stream_header.header.mime_type = mime_type or ("text/plain" if text else "")
        header.send_stream_header.header.attributes.update(attributes or {})
        if text:
            header.send_stream_header.header.text_header.operation_type = 0  # CREATE
        else:
            header.send_stream_header.header.byte_header.name = name
        await self._ffi_stream_request(header, "send_stream_header")
        for index, content in enumerate(chunks):
            chunk = ffi_pb2.FfiRequest()
            chunk.send_stream_chunk.chunk.stream_id = stream_id
            chunk.send_stream_chunk.chunk.chunk_index = index
            chunk.send_stream_chunk.chunk.content = content
            await self._ffi_stream_request(chunk, "send_stream_chunk")
        trailer = ffi_pb2.FfiRequest()
        trailer.send_stream_trailer.trailer.stream_id = stream_id
        trailer.send_stream_trailer.trailer.reason = reason
        await self._ffi_stream_request(trailer, "send_stream_trailer")
        return stream_id

    async def _ffi_stream_request(self, req: ffi_pb2.FfiRequest, kind: str) -> None:
        message = getattr(req, kind)
        message.local_participant_handle = self.lp._ffi_handle.handle
        message.sender_identity = self.identity
        queue = FfiClient.instance.queue.subscribe()
        try:
            async_id = getattr(FfiClient.instance.request(req), kind).async_id
            done = await queue.wait_for(lambda e: getattr(e, kind).async_id == async_id)
        finally:
            FfiClient.instance.queue.unsubscribe(queue)
        if getattr(done, kind).error:
            raise RuntimeError(f"{kind}: {getattr(done, kind).error}")

    def _on_data(self, packet: rtc.DataPacket) -> None:
        sender = packet.participant.identity if packet.participant else None
        reliable = packet.kind == rtc.DataPacketKind.KIND_RELIABLE
        self.received.append(Received(bytes(packet.data), packet.topic, sender, reliable))

    async def wait_for_data(self, pred, timeout: float = 10.0) -> Received:
        def find():
            return next((r for r in self.received if pred(r)), None)

        return await async_wait_until(find, timeout, f"data at {self.identity}")

    # ----- receiving audio -----
    def _on_track_subscribed(self, track: rtc.Track, _pub: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant) -> None:
        if track.kind != rtc.TrackKind.KIND_AUDIO:
            return
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        self._streams.append(stream)
        self._spawn(self._read_audio(stream, who.identity), f"audio-in:{who.identity}")

    async def _read_audio(self, stream: rtc.AudioStream, identity: str) -> None:
        async for event in stream:
            samples = np.frombuffer(event.frame.data, dtype=np.int16)
            level = rms_int16(samples)
            self.audio_frames[identity] += 1
            self.peak_rms[identity] = max(self.peak_rms[identity], level)
            if level >= self.loud_rms:
                self.loud_frames[identity] += 1

    async def wait_for_audio(self, from_identity: str, *, frames: int = 50, timeout: float = 20.0) -> int:
        """Wait until ``frames`` loud frames (RMS >= ``loud_rms``) came from ``from_identity``."""
        start = self.loud_frames[from_identity]

        def enough():
            return self.loud_frames[from_identity] - start >= frames

        try:
            await async_wait_until(enough, timeout, f"{frames} loud audio frames from {from_identity}")
        except TimeoutError as exc:
            raise TimeoutError(
                f"{exc}: frames={dict(self.audio_frames)} loud={dict(self.loud_frames)} peak={dict(self.peak_rms)}"
            ) from None
        return self.loud_frames[from_identity]
