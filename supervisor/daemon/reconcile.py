"""Reconciling: turn desired state into room sessions of one daemon, at a cost that does not grow with the
rooms other daemons hold.

One pass:

1. reads the desired entries of the rooms this daemon holds (one HMGET) and stops sessions of rooms no longer
   desired (or marked failed), restarts those whose pipeline changed;
2. if it has room for more (``max_rooms``, and its load: :mod:`supervisor.daemon.load`), asks the claimable index (``rs:claimable``, see
   :mod:`supervisor.daemon.leases`) for rooms that are due: desired and free, or whose lease has expired. Normally
   that is none, so an idle daemon beside another that holds a thousand rooms sends a few commands a second.
   It reads those rooms' desired entries, drops index entries of rooms no longer desired, and claims the
   rest, oldest desire first, pipelined, as many as its load allows (rooms an earlier run of it held are
   taken back whatever the load: their calls are going on); each granted claim becomes a RoomSession. A claim
   refused because the lease is held moves the room's index score to the holder's expiry. Due rooms it
   declines for load stay due, for other daemons (counted in ``declined``);
3. every :data:`REPAIR_INTERVAL` seconds, and soon after a control command, reads all of ``rs:desired`` once,
   to mend the index (a crash between two writes) and report unreadable entries.

After a pass failed for Redis trouble, expired leases of other daemons are not taken over for one lease TTL
once Redis answers again: after an outage every lease looks expired, and their holders, whose calls went on,
need a moment to re-assert them. Control commands (``rs:control``) only wake the loop early: the hash is the
state. Entries that cannot be rooms (a name that is not UTF-8 or empty, a value that is not desired-room JSON)
are logged once and never claimed; a room whose handling raises is logged and skipped, and the others go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Callable

from ..control import Control, DesiredRoom, DesiredState, shown
from ..errors import REDIS_TROUBLE
from ..settings import Settings
from .leases import Claim, Leases
from .load import WINDOW, Load, allowance
from .registry import SessionRegistry
from .session import RoomSession, SessionContext

log = logging.getLogger("supervisor")


REPAIR_INTERVAL = 30.0  # s: how often the whole desired state is read to mend the claimable index
REPAIR_AFTER_COMMAND = 2.0  # s: a control command brings the next full read this close (never nearer)
DUE_SLACK = 32  # due rooms read beyond the free places (some may be gone from desired state)


class Reconciler:
    def __init__(self, daemon_id: str, control: Control, leases: Leases, registry: SessionRegistry[RoomSession],
                 settings: Callable[[], Settings], context: Callable[[], SessionContext],
                 draining: Callable[[], bool], load: Callable[[], Load] = Load) -> None:
        self.daemon_id = daemon_id
        self.control = control
        self.leases = leases
        self.registry = registry
        self._settings = settings
        self._context = context
        self._draining = draining
        self._reported: dict[str, str] = {}  # unreadable desired-state entries already logged
        self._last_command: bytes | None = None
        self._next_repair = 0.0  # loop time of the next full read of desired state
        self._last_repair = 0.0
        self.full_reads = 0  # passes that read all of desired state
        self._takeovers_from = 0.0  # loop time before which expired leases of others are left to their holders
        self._store_failed = False
        self.desired_count = 0
        self.failed_count = 0
        self._reclaims: list[str] = []
        self._load = load
        self._started: deque[float] = deque()  # loop times of sessions started within the load window
        self.declined = 0  # due rooms left to other daemons because of this daemon's load
        self._declining = False

    def reclaim(self, rooms: list[str]) -> None:
        """Rooms an earlier run of this daemon held (its last heartbeat): claimed at the next pass without
        waiting for their index entries to come due (their leases are taken back at once, see leases)."""
        self._reclaims = list(rooms)

    async def once(self) -> None:
        """One pass. A room whose handling fails is logged and skipped."""
        loop = asyncio.get_running_loop()
        try:
            await self._pass(loop)
        except REDIS_TROUBLE:
            self._store_failed = True
            raise
        if self._store_failed:
            self._store_failed = False
            self._takeovers_from = loop.time() + self.leases.ttl

    async def _pass(self, loop: asyncio.AbstractEventLoop) -> None:
        held = await self.registry.sessions()
        if held:
            mine = await self.control.desired_of(list(held))
            for room, session in held.items():
                try:
                    self._steer(session, mine.rooms.get(room))
                except Exception:  # noqa: BLE001 - one room must not stop the others
                    log.exception("daemon %s: room=%s: reconciling its session failed; skipped", self.daemon_id,
                                  shown(room))
        if loop.time() >= self._next_repair:
            await self._repair()
            self.full_reads += 1
            self._last_repair = loop.time()
            self._next_repair = self._last_repair + REPAIR_INTERVAL
        self.desired_count = await self.control.count()
        await self._claim_rooms(held)

    async def _repair(self) -> None:
        desired = await self.control.desired()
        self._report_unreadable(desired)
        self.failed_count = sum(1 for d in desired.rooms.values() if d.failed)
        mended = await self.control.repair_claimable(desired)
        if mended:
            log.info("daemon %s: claimable index mended (%d entries)", self.daemon_id, mended)

    @staticmethod
    def _steer(session: RoomSession, want: DesiredRoom | None) -> None:
        if session.stopping or session.task is None or session.task.done():
            return
        if want is None or want.failed:
            session.request_stop("left")
        elif want.pipeline != session.pipeline:
            session.request_restart(want)

    def _report_unreadable(self, desired: DesiredState) -> None:
        """Log each skipped entry once (again only if it goes away and comes back, or changes)."""
        for name, why in desired.unreadable.items():
            if self._reported.get(name) != why:
                log.warning("daemon %s: desired-state entry %s skipped, never claimed: %s", self.daemon_id,
                            shown(name), why)
        self._reported = dict(desired.unreadable)

    def _admissible(self, held: int, now: float) -> int:
        """How many new rooms the daemon's load allows now (see :func:`supervisor.daemon.load.allowance`)."""
        while self._started and self._started[0] < now - WINDOW:
            self._started.popleft()
        threshold = self._settings().daemon.load_threshold
        if threshold >= 1.0:  # admission by load is off: only max_rooms limits
            return self._settings().daemon.max_rooms
        recent = min(len(self._started), held)
        return allowance(self._load().load, threshold, held - recent, recent)

    async def room_for_one_more(self) -> bool:
        """Whether this daemon would take one more new room now (max_rooms, load, not draining): LiveKit's agent
        dispatch asks before it gives a job."""
        if self._draining():
            return False
        held = await self.registry.count()
        if held >= self._settings().daemon.max_rooms:
            return False
        return self._admissible(held, asyncio.get_running_loop().time()) > 0

    async def start_dispatched(self, room: str, want: DesiredRoom) -> bool:
        """Claim a room LiveKit gave this daemon (now desired with ``want``) and start its session at once."""
        loop = asyncio.get_running_loop()
        if self._draining():
            return False
        sent = loop.time()
        claim = (await self.leases.claim_many([room], takeover=False))[0]
        if claim.expires_ms:  # due for other daemons only when this lease expires
            await self.leases.index({room: claim.expires_ms}, add=True)
        if not claim.granted or claim.status == "OWN":
            return False
        if await self._start_session(room, want, claim, sent):
            self._started.append(loop.time())
            return True
        return False

    async def _claim_rooms(self, held: dict[str, RoomSession]) -> None:
        loop = asyncio.get_running_loop()
        free = self._settings().daemon.max_rooms - len(held)
        if free <= 0 or self._draining():
            return
        reclaims, self._reclaims = self._reclaims, []
        admissible = self._admissible(len(held), loop.time())
        due = reclaims + [r for r in await self.leases.due(free + DUE_SLACK) if r not in reclaims]
        due = [room for room in due if room not in held]
        if not due:
            return
        wanted = await self.control.desired_of(due)
        gone = [room for room in due if room not in wanted.rooms or wanted.rooms[room].failed]
        if gone:
            await self.control.unindex(gone)
        ordered = [room for _, room in sorted((d.since, room) for room, d in wanted.rooms.items() if not d.failed)]
        taken_back = [room for room in ordered if room in reclaims][:free]
        fits = [room for room in ordered if room not in reclaims][:free - len(taken_back)]  # max_rooms allows
        candidates = taken_back + fits[:admissible]
        self._note_declined(len(fits) - len(fits[:admissible]), len(held))
        sent = loop.time()
        claims = await self.leases.claim_many(candidates, takeover=loop.time() >= self._takeovers_from)
        await self.leases.index({room: c.expires_ms for room, c in zip(candidates, claims)
                                 if not c.granted and c.expires_ms})
        for room, claim in zip(candidates, claims):
            if claim.granted and await self._start_session(room, wanted.rooms[room], claim, sent):
                self._started.append(loop.time())

    def _note_declined(self, count: int, held: int) -> None:
        """Count due rooms left to other daemons for load (not for max_rooms); say so when it starts/stops."""
        declining = count > 0
        if declining:
            self.declined += count
        if declining != self._declining:
            load, threshold = self._load().load, self._settings().daemon.load_threshold
            if declining:
                log.info("daemon %s: load %.2f (threshold %.2f, %d rooms held): leaving %d due room(s) to other "
                         "daemons", self.daemon_id, load, threshold, held, count)
            else:
                log.info("daemon %s: load %.2f (threshold %.2f): taking rooms again", self.daemon_id, load,
                         threshold)
            self._declining = declining

    async def _start_session(self, room: str, want: DesiredRoom, claim: Claim, sent: float) -> bool:
        """Start a session on a granted claim; False (lease released) when draining, already held, or broken."""
        session: RoomSession | None = None
        try:
            session = RoomSession(room, want, claim, sent, self._context())
            if not self._draining() and await self.registry.add(session):
                session.start()
                if claim.status == "RECLAIM":
                    log.info("daemon %s: room=%s: taken back from an earlier run of this daemon (%s), epoch %d",
                             self.daemon_id, shown(room), claim.previous_owner, claim.epoch)
                return True
            if claim.status == "OWN":
                return False  # a session of ours started meanwhile (a dispatched room) and holds this lease
        except Exception:  # noqa: BLE001 - one room must not stop the others
            log.exception("daemon %s: room=%s: could not start a session; lease released, room skipped",
                          self.daemon_id, shown(room))
            if session is not None:
                await self.registry.remove(session)
        await self.leases.release(room, claim.epoch)
        return False

    async def watch_commands(self, wake: asyncio.Event) -> None:
        """One pass of the control loop: wait up to 2 s for control commands; set ``wake`` when one came."""
        try:
            if self._last_command is None:
                self._last_command = await self.control.last_command_id()
            now = await self.control.wait_command(self._last_command, block_ms=2000)
        except REDIS_TROUBLE:
            await asyncio.sleep(1.0)
            return
        if now != self._last_command:
            self._last_command = now
            # desired state changed: read all of it soon (entries written by hand get reported then)
            self._next_repair = min(self._next_repair, self._last_repair + REPAIR_AFTER_COMMAND)
            wake.set()
