"""RoomSession: everything one daemon does for one room it holds, from lease claim to release.

A RoomSession owns the room's lease (claimed by the reconcile loop) and runs one ``run_session`` after another:

- the daemon's :class:`~supervisor.daemon.lease_keeper.LeaseKeeper` renews its lease; the session stops only on a
  *confirmed* loss (Redis answers that another daemon holds the lease, or LiveKit removes the bot, or the
  keeper steps aside after ``outage_grace``), never because Redis is unreachable: then it goes on, its records
  wait in the writer, and the room's stream gets ``store_unavailable`` / ``store_restored`` notes. On a loss the
  RoomSession ends without releasing anything: whoever holds the lease now owns the room;
- before its first session it removes any bot of ours still listed in the room (a previous holder's), and
  after every session it makes sure LiveKit no longer lists the bot (``ensure_gone``), removing it if needed,
  before it starts the next one or releases the lease;
- after an outcome with ``rejoin=True`` it starts a new session (new session id, fresh bot identity) after a
  capped exponential backoff with jitter; a session that ran longer than ``rejoin_max`` resets the backoff;
- a ``pipeline_error`` is restarted while the room's restart budget (``restart_budget`` crashes within
  ``restart_window`` seconds) lasts; then the room is marked failed in desired state and left alone;
- any other outcome (room closed or deleted, bot removed, the pipeline ended by itself) ends the room's call:
  it is removed from desired state;
- ``request_stop`` (leave, drain) ends the running session gracefully and releases the lease;
  ``request_restart`` (the desired pipeline changed) starts the next session with the new pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from livekit import api as lkapi

from eventstore.records import StoreRestored, StoreUnavailable
from eventstore.writer import EventWriter
from transport.session import SERVER_ENDED, SessionOutcome, SessionSpec
from transport.tokens import bot_identity

from ..control import Control, DesiredRoom
from ..errors import REDIS_TROUBLE
from ..settings import Settings, audio_format
from .bots import LiveKitUnreachable, ensure_gone, remove_other_bots
from .leases import Claim, Leases
from .loops import RestartBudget, backoff_delay
from .metrics import DaemonMetrics
from .registry import SessionRegistry

log = logging.getLogger("supervisor")

SessionRunner = Callable[[SessionSpec, EventWriter, asyncio.Event], Awaitable[SessionOutcome]]
STATES = ("running", "backoff", "stopping", "ended", "failed", "lost")


class StopSignal(asyncio.Event):
    """The ``stop`` event handed to ``run_session``; ``reason`` says why it was set (``left``, ``drained``,
    ``restart``, ``lease_lost``)."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = ""

    def stop(self, reason: str) -> None:
        if not self.is_set():
            self.reason = reason
            self.set()


@dataclass
class SessionContext:
    """What all RoomSessions of one daemon share."""

    writer: EventWriter
    leases: Leases
    control: Control
    registry: SessionRegistry["RoomSession"]
    metrics: DaemonMetrics
    producer: str
    settings: Callable[[], Settings]  # the current settings (SIGHUP may replace them)
    run_session: SessionRunner
    livekit: lkapi.LiveKitAPI | None = None  # to remove a previous holder's bot after a takeover
    # LiveKit agent jobs (supervisor.daemon.jobs): room -> (identity, token) of its job while that token may join,
    # and what to tell when a room's sessions are over for good on this daemon (room, last reason)
    job_token: Callable[[str], tuple[str, str] | None] | None = None
    job_ended: Callable[[str, str], None] | None = None
    # before a session's first record: an archived room whose tombstone expired gets its last seq back (archived.py)
    restore_seq: Callable[[str], Awaitable[int]] | None = None


class RoomSession:
    def __init__(self, room: str, desired: DesiredRoom, claim: Claim, claimed_at: float,
                 ctx: SessionContext) -> None:
        self.room = room
        self.desired = desired
        self.epoch = claim.epoch
        self.ctx = ctx
        self.state = "running"
        self.spec: SessionSpec | None = None  # the current (or last) session
        self.session_started = 0.0
        self.last_outcome: SessionOutcome | None = None
        self.lease_lost = ""
        self.unconfirmed = False  # LiveKit could not be shown that the last session's bot left
        self._first_cause = claim.cause
        if desired.how == "dispatch":  # a dispatched room: taken by the daemon LiveKit gave the job, else rejoined
            self._first_cause = "dispatch" if claim.status == "NEW" and self._job_token() else "rejoin"
        self.last_renewed = claimed_at  # loop time at which the last successful claim/renew was sent
        self._stop = StopSignal()
        self._restart_to: DesiredRoom | None = None
        self._restart_cause = "restart"
        daemon = ctx.settings().daemon
        self._budget = RestartBudget(daemon.restart_budget, daemon.restart_window)
        self.task: asyncio.Task[None] | None = None
        self._done = False

    # --- control from the daemon ----------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"room:{self.room}")
        self.task.add_done_callback(self._report_crash)
        return self.task

    def _report_crash(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._log(logging.ERROR, "room session crashed: %r", task.exception())

    @property
    def pipeline(self) -> str:
        return (self._restart_to or self.desired).pipeline

    @property
    def stopping(self) -> bool:
        return self._stop.is_set() and self._restart_to is None

    def request_stop(self, reason: str) -> None:
        """End the running session gracefully (``left`` or ``drained``) and release the lease."""
        self._restart_to = None
        if self.state in ("running", "backoff"):
            self.state = "stopping"
        self._stop.stop(reason)

    def request_restart(self, desired: DesiredRoom, reason: str = "restart", cause: str = "restart") -> None:
        """End the running session (``reason``) and run the next one with ``desired`` right away (``cause``):
        another pipeline, or a bot LiveKit no longer lists."""
        if self.stopping:
            return
        self._restart_to, self._restart_cause = desired, cause
        self._stop.stop(reason)

    def bot_missing(self) -> None:
        """LiveKit no longer lists this session's bot (a disconnect the rtc SDK never reported): join again."""
        if self.state == "running" and not self._stop.is_set():
            self._log(logging.WARNING, "LiveKit no longer lists bot %s; joining again", self.identity)
            self.ctx.metrics.rejoins.labels("rejoin").inc()
            self.request_restart(self.desired, reason="bot_missing", cause="rejoin")

    @property
    def running_for(self) -> float:
        """Seconds since the current session started (0 when none runs)."""
        return time.time() - self.session_started if self.state == "running" and self.session_started else 0.0

    def view(self) -> dict[str, Any]:
        spec = self.spec
        last = self.last_outcome
        return {
            "state": self.state, "session": spec.session_id if spec else "", "identity": spec.identity if spec else "",
            "epoch": self.epoch, "attempt": spec.attempt if spec else 0, "cause": spec.cause if spec else "",
            "pipeline": self.pipeline, "started": self.session_started,
            "last_reason": last.reason if last else "", "last_detail": last.detail[:200] if last else "",
        }

    def _log(self, level: int, message: str, *args: object) -> None:
        session = self.spec.session_id if self.spec else "-"
        log.log(level, "room=%s session=%s epoch=%d: " + message, self.room, session, self.epoch, *args)

    # --- the room's life ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._sessions()
        finally:
            self._done = True  # from here the lease is released, not renewed
            if self.ctx.job_ended is not None:
                self.ctx.job_ended(self.room, self.last_outcome.reason if self.last_outcome else self._stop.reason)
            await self._release()
            await self.ctx.registry.remove(self)

    def _job_token(self) -> tuple[str, str] | None:
        return self.ctx.job_token(self.room) if self.ctx.job_token is not None else None

    async def _remove_earlier_bots(self) -> None:
        """Before each bot of ours joins, no other bot of ours may be in the room (a dead holder's, our own
        earlier run's or earlier session's, a drained daemon's that LiveKit still lists)."""
        if self.ctx.livekit is None:
            return
        try:
            removed = await remove_other_bots(self.ctx.livekit, self.room)
        except LiveKitUnreachable as exc:
            self._log(logging.WARNING, "could not check the room for earlier bots: %s", exc)
            return
        if removed:
            self.ctx.metrics.errors.labels("ghost_removed").inc(len(removed))
            self._log(logging.INFO, "removed earlier bot(s) of ours from LiveKit before joining: %s",
                      ", ".join(removed))

    @property
    def holds_lease(self) -> bool:
        """Still ours to renew: not lost, not ended."""
        return not self.lease_lost and not self._done and self.task is not None and not self.task.done()

    @property
    def identity(self) -> str:
        return self.spec.identity if self.spec is not None else ""

    async def _sessions(self) -> None:
        cause, attempt, failures = self._first_cause, 0, 0
        loop = asyncio.get_running_loop()
        while True:
            if self._restart_to is not None:
                self.desired, self._restart_to = self._restart_to, None
                self._stop = StopSignal()
                cause, failures = self._restart_cause, 0
            if self._stop.is_set():  # a stop that came between two sessions: do not join only to leave
                self.state = "lost" if self.lease_lost else "ended"
                return
            outcome, ran_for = await self._one_session(cause, attempt, loop)
            attempt += 1
            if self._restart_to is not None:
                continue
            if self._stop.is_set():
                self.state = "lost" if self.lease_lost else "ended"
                return
            failures = 0 if ran_for >= self.ctx.settings().daemon.rejoin_max else failures
            step = await self._next_step(outcome, failures + 1)
            if step is None:
                return
            cause, failures = step[0], failures + 1
            self.state = "backoff"
            if await self._wait_or_stop(step[1]):
                self.state = "lost" if self.lease_lost else "ended"
                return

    async def _one_session(self, cause: str, attempt: int,
                           loop: asyncio.AbstractEventLoop) -> tuple[SessionOutcome, float]:
        self.spec = self._make_spec(cause, attempt)
        self.state = "stopping" if self._stop.is_set() else "running"
        await self._remove_earlier_bots()
        if self.ctx.restore_seq is not None:
            await self.ctx.restore_seq(self.room)
        self.session_started = time.time()
        started = loop.time()
        self._log(logging.INFO, "session starts (cause %s, attempt %d, identity %s, pipeline %s)",
                  cause, attempt, self.spec.identity, self.spec.pipeline)
        try:
            outcome = await self.ctx.run_session(self.spec, self.ctx.writer, self._stop)
        except Exception as exc:  # run_session promises not to raise; if it does, it counts as a crash
            self._log(logging.ERROR, "run_session raised %r", exc)
            outcome = SessionOutcome("pipeline_error", True, f"run_session raised {exc!r}")
        self.last_outcome = outcome
        ran_for = loop.time() - started
        self._log(logging.INFO, "session ended after %.1fs: %s (rejoin=%s) %s", ran_for, outcome.reason,
                  outcome.rejoin, outcome.detail)
        await self._confirm_gone(self.spec.identity, outcome)
        return outcome, ran_for

    async def _confirm_gone(self, identity: str, outcome: SessionOutcome) -> None:
        """The session is over only once LiveKit no longer lists its bot; remove it if it lingers. When the
        server itself ended the bot's connection (room closed, bot removed, server shutdown, ...), a LiveKit that
        does not answer leaves nothing unconfirmed."""
        self.unconfirmed = False
        if self.ctx.livekit is None:
            return
        try:
            how = await ensure_gone(self.ctx.livekit, self.room, identity)
        except LiveKitUnreachable as exc:
            if outcome.reason in SERVER_ENDED:
                self._log(logging.INFO, "bot %s was disconnected by LiveKit, which does not answer now (%s)",
                          identity, exc)
                return
            self.unconfirmed = True
            self.ctx.metrics.errors.labels("ghost_unconfirmed").inc()
            self._log(logging.ERROR, "cannot confirm that bot %s left LiveKit: %s", identity, exc)
            return
        if how == "removed":
            self.ctx.metrics.errors.labels("ghost_removed").inc()
            self._log(logging.WARNING, "bot %s was still listed by LiveKit after it left; removed it", identity)

    def _make_spec(self, cause: str, attempt: int) -> SessionSpec:
        settings = self.ctx.settings()
        lk = settings.livekit
        job = self._job_token()  # a dispatched room's bot joins as the job's identity while its token lasts
        identity, token = job if job is not None else (bot_identity(), "")
        return SessionSpec(
            room=self.room, session_id=uuid.uuid4().hex, identity=identity, token=token, job=self.desired.job,
            dispatch=self.desired.dispatch, epoch=self.epoch,
            producer=self.ctx.producer, pipeline=self.pipeline, livekit_url=lk.url, api_key=lk.api_key,
            api_secret=lk.api_secret, token_ttl=lk.token_ttl, attempt=attempt, cause=cause,
            stop_reason=self._stop.reason or "drained", pipelines=settings.pipelines,
            end_timeout=max(1.0, min(10.0, settings.daemon.drain_timeout / 2)),
            max_stream_bytes=settings.daemon.max_stream_bytes, audio=audio_format(settings),
        )

    async def _next_step(self, outcome: SessionOutcome, failures: int) -> tuple[str, float] | None:
        """(cause of the next session, delay before it), or None when the room is done."""
        daemon = self.ctx.settings().daemon
        if outcome.reason == "pipeline_error":
            self.ctx.metrics.errors.labels("pipeline_error").inc()
            if not outcome.rejoin or not self._budget.spend(time.monotonic()):
                await self._give_up(outcome)
                return None
            delay = backoff_delay(failures, daemon.rejoin_base, daemon.rejoin_max)
            self.ctx.metrics.rejoins.labels("restart").inc()
            self._log(logging.WARNING, "pipeline failed; restart in %.2fs", delay)
            return "restart", delay
        if outcome.rejoin:
            delay = backoff_delay(failures, daemon.rejoin_base, daemon.rejoin_max)
            self.ctx.metrics.rejoins.labels("rejoin").inc()
            self._log(logging.INFO, "LiveKit says come back (%s); rejoin in %.2fs", outcome.reason, delay)
            return "rejoin", delay
        if not await self._still_holder():
            return None
        self.state = "ended"
        if await self._control_call(lambda: self.ctx.control.end_room(self.room, self.desired)):
            self._log(logging.INFO, "the call is over (%s); room removed from desired state", outcome.reason)
        return None

    async def _give_up(self, outcome: SessionOutcome) -> None:
        if not await self._still_holder():
            return
        self.state = "failed"
        why = f"{outcome.reason}: {outcome.detail}"
        self.ctx.metrics.errors.labels("room_failed").inc()
        await self._control_call(lambda: self.ctx.control.mark_failed(self.room, self.desired, why))
        if outcome.rejoin:
            self._log(logging.ERROR, "restart budget spent (%d within %.0fs); room marked failed: %s",
                      self._budget.budget, self._budget.window, why)
        else:  # trying again would fail the same way
            self._log(logging.ERROR, "room marked failed (a restart would fail the same way; `room-supervisor join` "
                      "tries again): %s", why)

    async def _control_call(self, call: Callable[[], Awaitable[bool]]) -> bool:
        """Change desired state, waiting out a Redis outage (False if a stop came first)."""
        result = await self._through_outage(call, "update desired state")
        return bool(result)

    async def _through_outage(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        """``call()`` again and again while Redis does not answer, until it does or a stop comes (None)."""
        delay, said = 0.5, False
        while True:
            try:
                return await asyncio.wait_for(call(), 5)
            except REDIS_TROUBLE as exc:
                if not said:
                    self._log(logging.WARNING, "cannot %s yet (%r); retrying until Redis answers", what, exc)
                    said = True
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
                return None
            except asyncio.TimeoutError:
                delay = min(delay * 2, 5.0)

    async def _wait_or_stop(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True if a stop came first."""
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
        except asyncio.TimeoutError:
            return False
        return self._restart_to is None

    # --- the lease (renewed by the daemon's LeaseKeeper) ----------------------------------------------------

    async def _still_holder(self) -> bool:
        """Renew the lease now: only the holder may change the room's desired state (end it, fail it). An
        unreachable Redis is waited out (a stop ends the wait: False)."""
        renewed = await self._through_outage(lambda: self.ctx.leases.renew(self.room, self.epoch),
                                             "confirm the lease")
        if renewed:
            return True
        if renewed is not None:
            self.lose("lease taken over by another daemon")
        self.state = "lost" if self.lease_lost else "ended"
        return False

    def lose(self, why: str, reason: str = "lease_lost") -> None:
        """The room is no longer ours (confirmed): stop the session at once, release nothing."""
        if self.lease_lost:
            return
        self.lease_lost = why
        self.ctx.metrics.errors.labels("lease_lost").inc()
        self._log(logging.ERROR, "%s; stopping the session", why)
        self._restart_to = None
        self._stop.stop(reason)

    def store_unavailable(self, since: float, detail: str) -> Awaitable[None]:
        """Note in the room's stream that Redis cannot be reached since ``since`` (written when it can)."""
        return self._note(StoreUnavailable, since=since, detail=detail[:300])

    def store_restored(self, since: float, down_for: float) -> Awaitable[None]:
        return self._note(StoreRestored, since=since, down_for=round(down_for, 3))

    async def _note(self, cls: type[StoreUnavailable] | type[StoreRestored], **fields: Any) -> None:
        session = self.spec.session_id if self.spec is not None else ""
        record = cls(room=self.room, session=session, ts=time.time(), producer=self.ctx.producer, epoch=self.epoch,
                     **fields)
        try:
            await self.ctx.writer.append(record)
        except Exception as exc:  # noqa: BLE001 - a note must never stop the keeper
            self._log(logging.ERROR, "cannot record %s: %r", type(record).__name__, exc)

    async def _release(self) -> None:
        if self.lease_lost:
            return
        try:
            await asyncio.wait_for(self.ctx.leases.release(self.room, self.epoch), 2)
        except REDIS_TROUBLE as exc:
            self._log(logging.WARNING, "lease not released (%r); it expires by itself", exc)
