"""Pipelines used by tests, registered by name like a user's own (``tests/daemonproc.py`` ``TEST_PIPELINES``:
``raising = "tests.pipelines:raising"``, ...): daemon tests in the config file's ``[pipelines]``, transport
tests in ``SessionSpec.pipelines``.

With ``$TESTS_IMPORT_LOG`` set, importing this module appends a line to that file: tests prove with it that a
daemon never imported a ``module:function`` found in Redis."""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from pipecat.frames.frames import Frame, InputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from transport.pipelines import DiscardAudio, EchoAudio

if os.environ.get("TESTS_IMPORT_LOG"):
    with open(os.environ["TESTS_IMPORT_LOG"], "a", encoding="utf-8") as _log:
        _log.write(f"{__name__} {os.getpid()}\n")

DOCUMENTED = (
    "on_connected", "on_disconnected", "on_before_disconnect", "on_call_state_updated",
    "on_first_participant_joined", "on_participant_connected", "on_participant_disconnected",
    "on_participant_left", "on_audio_track_subscribed", "on_audio_track_unsubscribed",
    "on_video_track_subscribed", "on_video_track_unsubscribed", "on_data_received",
)

# room -> list of (event name, args after the transport) as user handlers received them
HANDLER_CALLS: dict[str, list[tuple[str, tuple[Any, ...]]]] = defaultdict(list)
# room -> the transport of its latest session (tests reach the bot's rtc room through it)
TRANSPORTS: dict[str, Any] = {}
# room -> the processors of its latest session's pipeline (for pipelines that expose them)
PROCESSORS: dict[str, list[Any]] = {}


def _register_all(transport: Any, room: str) -> None:
    TRANSPORTS[room] = transport
    for event in DOCUMENTED:
        def make(name: str):
            async def handler(t: Any, *args: Any) -> None:
                assert t is transport
                HANDLER_CALLS[room].append((name, tuple(bytes(a) if isinstance(a, (bytes, bytearray)) else a
                                                        for a in args)))
            return handler
        transport.add_event_handler(event, make(event))


def handlers(transport: Any, spec: Any) -> list[FrameProcessor]:
    """``listen`` plus a user handler on every documented event that records its arguments."""
    _register_all(transport, spec.room)
    return [DiscardAudio()]


def echo_handlers(transport: Any, spec: Any) -> list[FrameProcessor]:
    _register_all(transport, spec.room)
    return [EchoAudio()]


def hostile_handlers(transport: Any, spec: Any) -> list[FrameProcessor]:
    """User handlers that raise or hang: recording must not lose or delay anything."""
    import asyncio

    _register_all(transport, spec.room)

    async def raising(t: Any, *args: Any) -> None:
        raise RuntimeError("user handler fails on purpose")

    async def slow(t: Any, *args: Any) -> None:
        await asyncio.sleep(3)

    for event in DOCUMENTED:
        if event != "on_before_disconnect":
            transport.add_event_handler(event, raising)
            transport.add_event_handler(event, slow)
    return [DiscardAudio()]


class RaiseOnAudio(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            raise RuntimeError("this pipeline fails on the first audio frame")
        await self.push_frame(frame, direction)


def raising(transport: Any, spec: Any) -> list[FrameProcessor]:
    """A pipeline that crashes as soon as it hears audio."""
    return [RaiseOnAudio()]


def broken_factory(transport: Any, spec: Any) -> list[FrameProcessor]:
    raise ValueError("this factory cannot build a pipeline")


def wrong_return(transport: Any, spec: Any) -> Any:
    """Returns a processor, not a list of them: a factory of the wrong shape."""
    return RaiseOnAudio()


def one_argument(transport: Any) -> list[FrameProcessor]:
    return []


def listen_probe(transport: Any, spec: Any) -> list[FrameProcessor]:
    """The built-in ``listen`` pipeline, with the transport made reachable for the test."""
    from transport.pipelines import listen

    TRANSPORTS[spec.room] = transport
    processors = listen(transport, spec)
    PROCESSORS[spec.room] = processors
    return processors


listen_probe.audio_in = False  # type: ignore[attr-defined]  # as a user's factory says it: no input audio,
listen_probe.audio_out = False  # type: ignore[attr-defined]  # and no audio track


class InputProbe(FrameProcessor):
    """Echoes, and keeps (sample rate, bytes) of the first input audio frames it sees."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.frames: list[tuple[int, int]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, InputAudioRawFrame) and len(self.frames) < 200:
            self.frames.append((frame.sample_rate, len(frame.audio)))
        await super().process_frame(frame, direction)


class EchoProbe(InputProbe, EchoAudio):
    pass


def echo_probe(transport: Any, spec: Any) -> list[FrameProcessor]:
    """The built-in ``echo``, with the transport and what the pipeline hears made reachable for the test."""
    TRANSPORTS[spec.room] = transport
    processors = PROCESSORS[spec.room] = [EchoProbe()]
    return processors
