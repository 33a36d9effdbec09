"""LiveKit agent jobs this daemon was given (agent dispatch), and taking one: the room into desired state, the lease,
the session with the job's token.

A job arrives in two steps (:mod:`supervisor.daemon.worker` speaks the protocol): LiveKit asks whether this worker
is available for a room (:meth:`JobTaker.availability`, answered within LiveKit's ~2.5 s), then assigns it with a
token for the identity we named (:meth:`JobTaker.assign`): the room becomes desired with cause ``dispatch``, the job
and dispatch ids (``Control.dispatch``; a room already desired is not taken twice), this daemon claims its lease at
once and starts its session, whose bot joins with the job's token (LiveKit ties the job to that identity: deleting
the dispatch then ends the job). From there the room is like any other: if this daemon dies, any daemon rejoins it
when the lease expires (cause ``rejoin``, with its own token: LiveKit forgets a worker's jobs when its socket
closes). When the session ends for good the job's status goes back to LiveKit (success, or failed with the reason);
a ``JobTermination`` (the dispatch deleted, the room closed) removes the room from desired state and ends its
session with reason ``dispatch_ended``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from livekit.protocol import agent

from transport.tokens import bot_identity

from ..control import Control, DesiredRoom, check_room_name, shown
from ..errors import REDIS_TROUBLE, InvalidRoomName
from ..settings import Settings
from .metrics import DaemonMetrics
from .registry import SessionRegistry
from .session import RoomSession

log = logging.getLogger("supervisor")

TOKEN_LIFETIME = 3600.0  # s: LiveKit's job tokens are valid for an hour
TOKEN_MARGIN = 300.0  # s: a job token this close to its end is not used for a new join; the daemon mints its own
FAILED_REASONS = frozenset({"pipeline_error", "join_failed", "failed", "restart_budget_exhausted",
                            "connection_lost", "lease_lost"})


@dataclass(frozen=True, slots=True)
class Job:
    """A job LiveKit assigned to this daemon: ``token`` joins ``room`` as ``identity`` (kind agent)."""

    id: str
    dispatch_id: str
    room: str
    identity: str
    token: str
    received: float  # time.monotonic()

    def token_usable(self, now: float) -> bool:
        return now - self.received < TOKEN_LIFETIME - TOKEN_MARGIN

    def __repr__(self) -> str:  # never the token
        return f"Job({self.id}, dispatch={self.dispatch_id}, room={self.room!r}, identity={self.identity})"


StatusSender = Callable[[str, int, str], None]  # (job id, agent.JS_SUCCESS | agent.JS_FAILED, error)


class JobBook:
    """The jobs this daemon process holds, by room; a session asks it for the token of its room's job."""

    def __init__(self) -> None:
        self._by_room: dict[str, Job] = {}
        self._identities: dict[str, str] = {}  # job id -> identity offered (between availability and assignment)

    def offered(self, job_id: str, identity: str) -> None:
        self._identities[job_id] = identity
        if len(self._identities) > 1000:  # offers never assigned (LiveKit chose another worker)
            self._identities.pop(next(iter(self._identities)))

    def identity_for(self, job_id: str) -> str:
        return self._identities.pop(job_id, "")

    def add(self, job: Job) -> None:
        self._by_room[job.room] = job

    def get(self, room: str) -> Job | None:
        return self._by_room.get(room)

    def token_for(self, room: str) -> tuple[str, str] | None:
        """(identity, token) of the room's job while its token may still join (the session's ``job_token``)."""
        job = self._by_room.get(room)
        return (job.identity, job.token) if job is not None and job.token_usable(time.monotonic()) else None

    def pop(self, room: str) -> Job | None:
        return self._by_room.pop(room, None)

    def room_of(self, job_id: str) -> str | None:
        return next((room for room, job in self._by_room.items() if job.id == job_id), None)

    def __len__(self) -> int:
        return len(self._by_room)


class JobTaker:
    def __init__(self, daemon_id: str, control: Control, registry: SessionRegistry[RoomSession], jobs: JobBook,
                 settings: Callable[[], Settings], metrics: DaemonMetrics,
                 room_for_one_more: Callable[[], Awaitable[bool]],
                 start: Callable[[str, DesiredRoom], Awaitable[bool]]) -> None:
        self.daemon_id = daemon_id
        self.control = control
        self.registry = registry
        self.jobs = jobs
        self._settings = settings
        self.metrics = metrics
        self._room_for_one_more = room_for_one_more  # not draining, below max_rooms, load allows
        self._start = start  # claim the lease and start the session
        self.send_status: StatusSender | None = None

    def pipeline(self) -> str:
        s = self._settings()
        return s.dispatch.pipeline or s.daemon.default_pipeline

    async def availability(self, job: agent.Job) -> agent.AvailabilityResponse:
        """Whether this daemon takes ``job``: not draining, room for it (max_rooms, load), a usable room name not
        desired already. Declined jobs go to another worker (``available=False``); a room that is supervised
        already ends the job (``terminate``): its bot is there."""
        self.metrics.jobs.labels("offered").inc()
        room = job.room.name
        why, terminate = await self._refusal(room)
        if why:
            self.metrics.jobs.labels("declined").inc()
            log.info("daemon %s: room=%s: job %s declined: %s", self.daemon_id, shown(room), job.id, why)
            return agent.AvailabilityResponse(job_id=job.id, available=False, terminate=terminate)
        identity = bot_identity()
        self.jobs.offered(job.id, identity)
        self.metrics.jobs.labels("accepted").inc()
        return agent.AvailabilityResponse(job_id=job.id, available=True, participant_identity=identity,
                                          participant_name="room-supervisor")

    async def _refusal(self, room: str) -> tuple[str, bool]:
        try:
            check_room_name(room)
        except InvalidRoomName as exc:
            return str(exc), True
        if not await self._room_for_one_more():
            return "no room for it (draining, max_rooms or load)", False
        try:
            current = await self.control.get(room)
        except REDIS_TROUBLE as exc:
            return f"Redis does not answer ({type(exc).__name__})", False
        if current is not None and not current.failed:
            return f"room already supervised ({current.how})", True
        return "", False

    async def assign(self, job: agent.Job, token: str) -> str:
        """Take an assigned job: desired state, lease, session. Returns an error ('' when the session started)."""
        room = job.room.name
        identity = self.jobs.identity_for(job.id)
        if not identity or not token:
            return "assignment for a job this worker did not offer to take"
        self.metrics.jobs.labels("assigned").inc()
        try:
            if not await self.control.dispatch(room, self.pipeline(), job.id, job.dispatch_id):
                return "room already supervised"
            want = await self.control.get(room)
        except REDIS_TROUBLE as exc:
            return f"Redis does not answer ({type(exc).__name__})"
        if want is None or want.job != job.id:
            return "room's desired state changed meanwhile"
        self.jobs.add(Job(job.id, job.dispatch_id, room, identity, token, time.monotonic()))
        if not await self._start(room, want):
            self.jobs.pop(room)
            return "could not claim the room (another daemon holds it, or this one is draining)"
        log.info("daemon %s: room=%s: job %s (dispatch %s) taken; bot %s joins", self.daemon_id, shown(room), job.id,
                 job.dispatch_id, identity)
        return ""

    async def terminate(self, job_id: str) -> None:
        """LiveKit ended the job (dispatch deleted, room closed): the room is no longer desired, its session ends."""
        room = self.jobs.room_of(job_id)
        if room is None:
            return  # already over (LiveKit also terminates a job whose agent left)
        self.metrics.jobs.labels("terminated").inc()
        session = (await self.registry.sessions()).get(room)
        want = session.desired if session is not None else None
        log.info("daemon %s: room=%s: LiveKit ended job %s; the bot leaves", self.daemon_id, shown(room), job_id)
        try:
            current = await self.control.get(room)
            if current is not None and current.job == job_id:
                await self.control.end_room(room, current)
        except REDIS_TROUBLE as exc:
            log.warning("daemon %s: room=%s: could not remove it from desired state (%r)", self.daemon_id,
                        shown(room), exc)
        if session is not None and want is not None and want.job == job_id:
            session.request_stop("dispatch_ended")

    def ended(self, room: str, reason: str) -> None:
        """The room's session ended for good on this daemon: report the job's end to LiveKit."""
        job = self.jobs.pop(room)
        if job is None or self.send_status is None:
            return
        failed = reason in FAILED_REASONS
        if failed:
            self.metrics.jobs.labels("failed").inc()
        self.send_status(job.id, agent.JS_FAILED if failed else agent.JS_SUCCESS, reason if failed else "")
