"""Pipelines a session can run, by name: built-in ``echo`` and ``listen``, or the user's own registered in the
daemon's settings (``[pipelines] mybot = "mypkg.bot:factory"``) or as an entry point in the group
``room_supervisor.pipelines``. How names resolve is in :mod:`transport.pipeline_names` (pipecat-free, for the CLI);
nothing else, in particular no ``module:function`` read from Redis, is ever imported.

A pipeline factory has the signature ``factory(transport, spec) -> list[FrameProcessor]`` and returns the
processors that go between ``transport.input()`` and ``transport.output()``. It may register event handlers
on the transport (``@transport.event_handler("on_first_participant_joined")``) like any pipecat bot.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.livekit.transport import LiveKitParams

from .pipeline_names import PipelineNotFound, check_target, resolve_target

SAMPLE_RATE = 48_000

PipelineFactory = Callable[[Any, Any], list[FrameProcessor]]


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


BUILTIN: dict[str, PipelineFactory] = {"echo": echo, "listen": listen}  # the names are BUILTIN_NAMES


def load_pipeline(name: str, registered: Mapping[str, str] | None = None) -> PipelineDefinition:
    """The pipeline called ``name``: built in, else in ``registered`` (name -> ``module:function``, from the
    daemon's settings), else an entry point in ``room_supervisor.pipelines``.

    Raises :class:`PipelineNotFound` with what to do: for anything that is not a registered name (checked
    before anything is imported), and for a registered target that cannot be imported or is not callable."""
    target = resolve_target(name, registered or {})
    if target is None:
        return PipelineDefinition(name, BUILTIN[name])
    module_name, func_name = check_target(target)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module's own code failing: the same next time
        raise PipelineNotFound(f"pipeline {name!r} ({target}): cannot import {module_name}: {exc!r}") from None
    factory = getattr(module, func_name, None)
    if factory is None:
        raise PipelineNotFound(f"pipeline {name!r} ({target}): {module_name} has no {func_name}")
    if not callable(factory):
        raise PipelineNotFound(f"pipeline {name!r} ({target}) is not callable")
    return PipelineDefinition(name, factory)
