"""One session: one join of one room by one bot, from ``session_started`` to ``session_ended``.

:func:`run_session` joins the room with a fresh token, runs the pipeline until something ends it, and says
why in a :class:`SessionOutcome`. What ends a session:

- ``stop`` is set (leave or drain): the pipeline gets an ``EndFrame``, so ``on_before_disconnect`` runs and the
  bot leaves; reason ``drained``/``left`` as the caller says;
- the server ends the bot's connection: room closed or deleted, bot removed (no rejoin), or the connection is
  lost for good (rejoin). pipecat keeps such a pipeline running; we cancel it;
- the pipeline fails (an ``ErrorFrame`` or an exception in the factory): reason ``pipeline_error``; a pipeline
  name that is not registered (built in, ``spec.pipelines``, entry points) is ``pipeline_error`` without rejoin,
  and nothing is imported for it; so is a registered one that cannot be used (its module does not import, it
  is not a ``factory(transport, spec)``, or it returned something other than a list of processors): trying
  again would fail the same way;
- the pipeline ends by itself (the bot's own ``EndFrame``): reason ``left``.

It never raises for a failing pipeline; only cancellation propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Mapping

from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.workers.runner import WorkerRunner

from eventstore.records import SessionEnded, SessionStarted
from eventstore.writer import EventWriter

from .audio import AudioFormat, AudioInput
from .pipelines import PipelineNotFound, build_processors, load_pipeline
from .recorder import EventRecorder
from .recording import RecordingLiveKitTransport
from .streams import MAX_STREAM_BYTES
from .tokens import bot_token

log = logging.getLogger("transport")

# LiveKit's reason for ending the bot's connection -> (our reason, come back?)
_SERVER_REASONS: dict[str, tuple[str, bool]] = {
    "ROOM_DELETED": ("room_deleted", False),
    "ROOM_CLOSED": ("room_closed", False),
    "PARTICIPANT_REMOVED": ("removed", False),
    "DUPLICATE_IDENTITY": ("duplicate_identity", False),
}


# Stop reasons after which the supervisor joins again at once (the stream says so: ``rejoin`` true).
REJOINING_STOPS = frozenset({"bot_missing"})
# Our reasons for a session that the server ended (it disconnected the bot itself).
SERVER_ENDED = frozenset({*(ours for ours, _ in _SERVER_REASONS.values()), "connection_lost"})


@dataclass(frozen=True)
class SessionSpec:
    room: str
    session_id: str
    identity: str
    epoch: int
    producer: str
    pipeline: str
    livekit_url: str
    api_key: str
    api_secret: str = field(repr=False)
    token_ttl: float = 600.0
    attempt: int = 0
    cause: str = "join"  # join | dispatch | rejoin | restart | takeover
    token: str = field(default="", repr=False)  # a token to join with (a LiveKit job's); empty: one is minted
    job: str = ""  # the LiveKit agent job and dispatch this room came with (dispatch), recorded in session_started
    dispatch: str = ""
    stop_reason: str = "drained"  # reason recorded when `stop` ends the session, unless `stop.reason` says
    end_timeout: float = 10.0  # how long a graceful leave may take before the pipeline is cancelled
    # name -> "module:function" registered by the daemon's settings ([pipelines]); `pipeline` is resolved
    # through it, the built-ins and entry points only (transport.pipelines.load_pipeline)
    pipelines: Mapping[str, str] = field(default_factory=dict, hash=False)
    max_stream_bytes: int = MAX_STREAM_BYTES  # content kept of one LiveKit text or byte stream; the rest is counted
    audio: AudioFormat = AudioFormat()  # rates and frame length of the pipeline's audio (settings [audio])


@dataclass(frozen=True)
class SessionOutcome:
    reason: str
    rejoin: bool
    detail: str = ""


def outcome_for_server_reason(reason: str) -> SessionOutcome:
    ours, rejoin = _SERVER_REASONS.get(reason, ("connection_lost", True))
    return SessionOutcome(ours, rejoin, f"LiveKit: {reason}")


class _Session:
    def __init__(self, spec: SessionSpec, writer: EventWriter) -> None:
        self.spec = spec
        self.recorder = EventRecorder(writer, room=spec.room, session=spec.session_id, epoch=spec.epoch,
                                      producer=spec.producer)
        self.pipeline_error = ""
        self.errored = asyncio.Event()
        self.transport: RecordingLiveKitTransport | None = None
        self.runner: WorkerRunner | None = None

    def build(self) -> PipelineWorker:
        """Transport, user handlers and pipeline, before anything is recorded or joined."""
        spec = self.spec
        definition = load_pipeline(spec.pipeline, spec.pipelines)
        token = spec.token or bot_token(spec.api_key, spec.api_secret, spec.room, spec.identity, ttl=spec.token_ttl)
        transport = RecordingLiveKitTransport(spec.livekit_url, token, spec.room, self.recorder,
                                              definition.params(spec.audio), max_stream_bytes=spec.max_stream_bytes,
                                              audio_input=AudioInput(spec.audio, enabled=definition.audio_in,
                                                                     publish=definition.audio_out))
        self.transport = transport
        processors = build_processors(definition, transport, spec)
        worker = PipelineWorker(
            Pipeline([transport.input(), *processors, transport.output()]),
            params=PipelineParams(audio_in_sample_rate=spec.audio.in_sample_rate,
                                  audio_out_sample_rate=spec.audio.out_sample_rate),
            idle_timeout_secs=None,
            enable_rtvi=False,
            # turn tracking is the one per-frame observer pipecat adds by default (~15% of an echo room's CPU);
            # nothing we record comes from it
            enable_turn_tracking=False,
        )

        @worker.event_handler("on_pipeline_error")
        async def _on_error(_worker: PipelineWorker, frame: object) -> None:
            self.pipeline_error = str(getattr(frame, "error", frame))
            self.errored.set()

        return worker

    def start(self, worker: PipelineWorker) -> asyncio.Task[None]:
        self.runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
        return asyncio.get_running_loop().create_task(self._run(worker), name=f"session:{self.spec.session_id}")

    async def _run(self, worker: PipelineWorker) -> None:
        assert self.runner is not None
        await self.runner.add_workers(worker)
        await self.runner.run()

    async def supervise(self, run_task: asyncio.Task[None], stop: asyncio.Event) -> SessionOutcome:
        assert self.transport is not None and self.runner is not None
        ended = self.transport.ended
        waiters = {
            asyncio.ensure_future(stop.wait()): "stop",
            asyncio.ensure_future(ended.wait()): "ended",
        }
        waiters[asyncio.ensure_future(self.errored.wait())] = "error"
        try:
            done, _ = await asyncio.wait({run_task, *waiters}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if run_task in done:
            return self._finished_by_itself(run_task)
        if stop.is_set() and not ended.is_set() and not self.pipeline_error:
            reason = getattr(stop, "reason", "") or self.spec.stop_reason
            await self._end_gracefully(run_task, reason)
            return SessionOutcome(reason, reason in REJOINING_STOPS)
        await self._cancel(run_task)
        if self.pipeline_error:
            return SessionOutcome("pipeline_error", True, self.pipeline_error)
        return outcome_for_server_reason(self.transport.end_reason)

    def _finished_by_itself(self, run_task: asyncio.Task[None]) -> SessionOutcome:
        exc = run_task.exception()
        if exc is not None:
            return SessionOutcome("pipeline_error", True, repr(exc))
        if self.pipeline_error:
            return SessionOutcome("pipeline_error", True, self.pipeline_error)
        if not self.recorder.connected:
            return SessionOutcome("join_failed", True, "the pipeline ended before the bot joined")
        if self.transport is not None and self.transport.ended.is_set():
            return outcome_for_server_reason(self.transport.end_reason)
        return SessionOutcome("left", False, "the pipeline ended")

    async def _end_gracefully(self, run_task: asyncio.Task[None], reason: str) -> None:
        assert self.runner is not None
        await self.runner.end(reason=reason)
        try:
            await asyncio.wait_for(asyncio.shield(run_task), self.spec.end_timeout)
        except asyncio.TimeoutError:
            log.warning("room=%s session=%s: graceful leave took over %.1fs; cancelling", self.spec.room,
                        self.spec.session_id, self.spec.end_timeout)
            await self._cancel(run_task)

    async def cancel_pipeline(self, run_task: asyncio.Task[None]) -> None:
        """Leave at once (bounded by ``end_timeout``), whatever state the pipeline is in."""
        try:
            await self._cancel(run_task)
        except Exception:
            log.exception("room=%s session=%s: cancelling the pipeline failed", self.spec.room, self.spec.session_id)

    async def _cancel(self, run_task: asyncio.Task[None]) -> None:
        assert self.runner is not None
        if not run_task.done():
            await self.runner.cancel(reason="session ended")
            try:
                await asyncio.wait_for(asyncio.shield(run_task), self.spec.end_timeout)
            except asyncio.TimeoutError:
                run_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await run_task


async def run_session(spec: SessionSpec, writer: EventWriter, stop: asyncio.Event) -> SessionOutcome:
    """Run one session of ``spec.room`` until it ends; see the module docstring.

    ``stop`` may carry a ``reason`` attribute (``left``, ``drained``, ``restart``, ...) set with it; that is the
    reason recorded when ``stop`` ends the session (else ``spec.stop_reason``)."""
    session = _Session(spec, writer)
    rec = session.recorder
    worker: PipelineWorker | None = None
    outcome = SessionOutcome("pipeline_error", True, "not started")
    try:
        worker = session.build()  # handlers are registered before the first record, so they see "joining"
    except PipelineNotFound as exc:  # not registered, or unusable: the same next time
        log.error("room=%s session=%s: %s%s", spec.room, spec.session_id, exc,
                  f"\n{exc.details}" if getattr(exc, "details", "") else "")
        outcome = SessionOutcome("pipeline_error", False, str(exc))
    except Exception as exc:  # the user's factory failed: maybe passing trouble, so the restart budget applies
        log.exception("room=%s session=%s: the factory of pipeline %r raised", spec.room, spec.session_id,
                      spec.pipeline)
        outcome = SessionOutcome("pipeline_error", True, f"pipeline factory failed: {exc!r}")
    await rec.emit(SessionStarted, identity=spec.identity, pipeline=spec.pipeline, attempt=spec.attempt,
                   cause=spec.cause, job=spec.job, dispatch=spec.dispatch)
    log.info("room=%s session=%s: starting (identity %s, pipeline %s, attempt %d, cause %s)", spec.room,
             spec.session_id, spec.identity, spec.pipeline, spec.attempt, spec.cause)
    try:
        if worker is not None:
            run_task = session.start(worker)
            try:
                outcome = await session.supervise(run_task, stop)
            except asyncio.CancelledError:
                # The supervisor gave up on this session (forced exit, lease lost): the bot must not stay in
                # the room behind its back.
                outcome = SessionOutcome("cancelled", False, "the supervisor cancelled the session")
                await asyncio.shield(session.cancel_pipeline(run_task))
                raise
        return outcome
    finally:
        if session.transport is not None:
            await session.transport.wait_recorded()
        await rec.emit(SessionEnded, reason=outcome.reason, rejoin=outcome.rejoin, detail=outcome.detail)
        log.info("room=%s session=%s: ended (%s, rejoin=%s) %s", spec.room, spec.session_id, outcome.reason,
                 outcome.rejoin, outcome.detail)
