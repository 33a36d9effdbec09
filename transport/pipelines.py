"""Pipelines a session can run, by name: built-in ``echo`` and ``listen``, or the user's own registered in the
daemon's settings (``[pipelines] mybot = "mypkg.bot:factory"``) or as an entry point in the group
``room_supervisor.pipelines``. How names resolve is in :mod:`transport.pipeline_names` (pipecat-free, for the CLI);
nothing else, in particular no ``module:function`` read from Redis, is ever imported.

A pipeline factory has the signature ``factory(transport, spec) -> list[FrameProcessor]`` and returns the
processors that go between ``transport.input()`` and ``transport.output()``. It may register event handlers
on the transport (``@transport.event_handler("on_first_participant_joined")``) like any pipecat bot. Input
audio arrives at ``spec.audio.in_sample_rate`` in frames of ``spec.audio.frame_ms``; output audio is published
at ``spec.audio.out_sample_rate`` (the daemon's ``[audio]`` settings). A factory that never uses input audio sets
the attribute ``audio_in = False`` on itself (as ``listen`` does): its rooms then decode no audio in Python; one
that never speaks sets ``audio_out = False``: its bot publishes no audio track.
"""

from __future__ import annotations

import importlib
import inspect
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.livekit.transport import LiveKitParams

from .audio import AudioFormat
from .pipeline_names import PipelineNotFound, check_target, known_names, resolve_target

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
    """Drops input audio (a pipeline that takes none gets none: see :mod:`transport.audio`; this is for a
    pipeline built with audio input on, like the process-per-call baseline of ``bench/rooms.py``)."""

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


listen.audio_in = False  # type: ignore[attr-defined]  # records every event, decodes no audio,
listen.audio_out = False  # type: ignore[attr-defined]  # and publishes no audio track


@dataclass(frozen=True)
class PipelineDefinition:
    name: str
    factory: PipelineFactory

    @property
    def audio_in(self) -> bool:
        """Whether the pipeline takes input audio (a factory says no with ``factory.audio_in = False``)."""
        return getattr(self.factory, "audio_in", True) is not False

    @property
    def audio_out(self) -> bool:
        """Whether the pipeline speaks (a factory says no with ``factory.audio_out = False``)."""
        return getattr(self.factory, "audio_out", True) is not False

    def params(self, audio: AudioFormat) -> LiveKitParams:
        return audio.params(audio_in=self.audio_in, audio_out=self.audio_out)


BUILTIN: dict[str, PipelineFactory] = {"echo": echo, "listen": listen}  # the names are BUILTIN_NAMES


class PipelineUnusable(PipelineNotFound):
    """What a pipeline name is registered as cannot be used: its module does not import, or it is not a
    ``factory(transport, spec)``, or the factory returned something that is not a list of processors. Trying
    again gives the same result, so a room fails once with the reason. ``details`` holds the traceback."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def load_pipeline(name: str, registered: Mapping[str, str] | None = None) -> PipelineDefinition:
    """The pipeline called ``name``: built in, else in ``registered`` (name -> ``module:function``, from the
    daemon's settings), else an entry point in ``room_supervisor.pipelines``.

    Raises :class:`PipelineNotFound` with what to do for anything that is not a registered name (checked
    before anything is imported), and :class:`PipelineUnusable` for a registered target that cannot be imported
    or is not a ``factory(transport, spec)`` function."""
    target = resolve_target(name, registered or {})
    if target is None:
        return PipelineDefinition(name, BUILTIN[name])
    module_name, func_name = check_target(target)
    what = f"pipeline {name!r} ({target})"
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module's own code failing: the same next time
        raise PipelineUnusable(f"{what}: cannot import {module_name}: {exc!r}; {WHERE_CODE_LIVES}",
                               traceback.format_exc()) from None
    factory = getattr(module, func_name, None)
    if factory is None:
        raise PipelineUnusable(f"{what}: {module_name} has no {func_name}")
    _check_shape(what, factory)
    return PipelineDefinition(name, factory)


WHERE_CODE_LIVES = ("the daemon imports it, so its package must be installed into the daemon's virtualenv (or "
                    "its directory be on the daemon's PYTHONPATH; under systemd, not in a home directory)")
_SHAPE = "register a function factory(transport, spec) that returns a list of pipecat FrameProcessors"


def _check_shape(what: str, factory: object) -> None:
    if inspect.isclass(factory):
        raise PipelineUnusable(f"{what} is a class, not a factory function; {_SHAPE}")
    if not callable(factory):
        raise PipelineUnusable(f"{what} is not callable; {_SHAPE}")
    try:
        inspect.signature(factory).bind(None, None)
    except TypeError:
        raise PipelineUnusable(f"{what} cannot be called as factory(transport, spec): its signature is "
                               f"{inspect.signature(factory)}; {_SHAPE}") from None
    except ValueError:  # no signature to read (a builtin): calling it will tell
        pass


def build_processors(definition: PipelineDefinition, transport: Any, spec: Any) -> list[FrameProcessor]:
    """``definition.factory(transport, spec)``, checked: a result that is not a list (or tuple) of
    FrameProcessors raises :class:`PipelineUnusable`. What the factory raises is raised as it is (it may be
    passing trouble, which a restart can cure)."""
    processors = definition.factory(transport, spec)
    if not isinstance(processors, (list, tuple)) or not all(isinstance(p, FrameProcessor) for p in processors):
        raise PipelineUnusable(f"pipeline {definition.name!r}: its factory returned {_describe(processors)}, not a "
                               f"list of FrameProcessors; {_SHAPE}")
    return list(processors)


def _describe(value: object) -> str:
    if isinstance(value, (list, tuple)):
        bad = next(p for p in value if not isinstance(p, FrameProcessor))
        return f"a {type(value).__name__} holding a {type(bad).__name__}"
    return f"a {type(value).__name__}"


def check_registered(registered: Mapping[str, str]) -> tuple[list[str], dict[str, PipelineNotFound]]:
    """Load every pipeline the settings and installed packages register (imports them; nothing is built):
    (the names that load, name -> why each other one cannot be used). The daemon runs it at start and on SIGHUP,
    so that a broken pipeline is reported at once, not when a room first runs it."""
    usable: list[str] = []
    broken: dict[str, PipelineNotFound] = {}
    for name in known_names(registered):
        try:
            load_pipeline(name, registered)
        except PipelineNotFound as exc:
            broken[name] = exc
        else:
            usable.append(name)
    return usable, broken
