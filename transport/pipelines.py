"""Pipelines a session can run: built-in ``echo`` and ``listen``, or the user's own as ``module:function``.

A pipeline factory has the signature ``factory(transport, spec) -> list[FrameProcessor]`` and returns the
processors that go between ``transport.input()`` and ``transport.output()``. It may register event handlers
on the transport (``@transport.event_handler("on_first_participant_joined")``) like any pipecat bot.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.livekit.transport import LiveKitParams

SAMPLE_RATE = 48_000

PipelineFactory = Callable[[Any, Any], list[FrameProcessor]]


class PipelineNotFound(LookupError):
    """The named pipeline is neither built in nor an importable ``module:function``."""


class EchoAudio(FrameProcessor):
    """Input audio becomes output audio: what a participant says comes back to them."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            frame = OutputAudioRawFrame(audio=frame.audio, sample_rate=frame.sample_rate,
                                        num_channels=frame.num_channels)
        await self.push_frame(frame, direction)


class DiscardAudio(FrameProcessor):
    """Consumes input audio so nothing queues up. pipecat queues subscribed audio without bound when audio
    input is disabled, so ``listen`` keeps input enabled and drops the frames here instead."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dropped = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self.dropped += 1
        else:
            await self.push_frame(frame, direction)


def echo(transport: Any, spec: Any) -> list[FrameProcessor]:
    return [EchoAudio()]


def listen(transport: Any, spec: Any) -> list[FrameProcessor]:
    return [DiscardAudio()]


@dataclass(frozen=True)
class PipelineDefinition:
    name: str
    factory: PipelineFactory

    def params(self) -> LiveKitParams:
        return LiveKitParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=SAMPLE_RATE,
            audio_out_sample_rate=SAMPLE_RATE,
            audio_in_user_tracks=False,
            audio_out_end_silence_secs=0,
        )


BUILTIN: dict[str, PipelineFactory] = {"echo": echo, "listen": listen}


def check_pipeline_name(name: str) -> str:
    """Syntax check only (the CLI uses it before writing desired state): built-in or ``module:function``."""
    if name in BUILTIN:
        return name
    module, sep, func = name.partition(":")
    if not sep or not module or not func.isidentifier() or not all(p.isidentifier() for p in module.split(".")):
        raise PipelineNotFound(f"unknown pipeline {name!r}: use one of {sorted(BUILTIN)} or module:function")
    return name


def load_pipeline(name: str) -> PipelineDefinition:
    """The pipeline called ``name``; raises :class:`PipelineNotFound` with what to do."""
    if name in BUILTIN:
        return PipelineDefinition(name, BUILTIN[name])
    check_pipeline_name(name)
    module_name, _, func_name = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), func_name)
    except ImportError as exc:
        raise PipelineNotFound(f"pipeline {name!r}: cannot import {module_name}: {exc}") from None
    except AttributeError:
        raise PipelineNotFound(f"pipeline {name!r}: {module_name} has no {func_name}") from None
    if not callable(factory):
        raise PipelineNotFound(f"pipeline {name!r} is not callable")
    return PipelineDefinition(name, factory)
