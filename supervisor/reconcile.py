"""Reconciling: turn desired state into room sessions of one daemon.

One pass reads ``rs:desired``, stops sessions of rooms no longer desired (or marked failed), restarts those
whose pipeline changed, and claims the leases of desired rooms nobody holds, oldest desire first, up to
``max_rooms``; each granted claim becomes a RoomSession. Claims go out pipelined, one round trip per batch.
Control commands (``rs:control``) only wake the loop early: the hash is the state. Entries of the hash that
cannot be rooms (a name that is not UTF-8 or empty, a value that is not desired-room JSON) are logged once and
never claimed; a room whose handling raises is logged and skipped, and the others go on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from .control import Control, DesiredRoom, DesiredState, shown
from .leases import Claim, Leases
from .redisutil import REDIS_TROUBLE
from .registry import SessionRegistry
from .session import RoomSession, SessionContext
from .settings import Settings

log = logging.getLogger("supervisor")


class Reconciler:
    def __init__(self, daemon_id: str, control: Control, leases: Leases, registry: SessionRegistry[RoomSession],
                 settings: Callable[[], Settings], context: Callable[[], SessionContext],
                 draining: Callable[[], bool]) -> None:
        self.daemon_id = daemon_id
        self.control = control
        self.leases = leases
        self.registry = registry
        self._settings = settings
        self._context = context
        self._draining = draining
        self._reported: dict[str, str] = {}  # unreadable desired-state entries already logged
        self._last_command: bytes | None = None

    async def once(self) -> DesiredState:
        """One pass; returns the desired state it acted on. A room whose handling fails is logged and skipped."""
        desired = await self.control.desired()
        held = await self.registry.sessions()
        for room, session in held.items():
            try:
                self._steer(session, desired.rooms.get(room))
            except Exception:  # noqa: BLE001 - one room must not stop the others
                log.exception("daemon %s: room=%s: reconciling its session failed; skipped", self.daemon_id,
                              shown(room))
        self._report_unreadable(desired)
        await self._claim_rooms(desired, held)
        return desired

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

    async def _claim_rooms(self, desired: DesiredState, held: dict[str, RoomSession]) -> None:
        loop = asyncio.get_running_loop()
        free = self._settings().daemon.max_rooms - len(held)
        wanted = sorted((d.since, room) for room, d in desired.rooms.items() if room not in held and not d.failed)
        candidates = [room for _, room in wanted]
        while free > 0 and candidates and not self._draining():
            chunk, candidates = candidates[:free], candidates[free:]
            sent = loop.time()
            for room, claim in zip(chunk, await self.leases.claim_many(chunk)):
                if claim.granted and await self._start_session(room, desired.rooms[room], claim, sent):
                    free -= 1

    async def _start_session(self, room: str, want: DesiredRoom, claim: Claim, sent: float) -> bool:
        """Start a session on a granted claim; False (lease released) when draining, already held, or broken."""
        session: RoomSession | None = None
        try:
            session = RoomSession(room, want, claim, sent, self._context())
            if not self._draining() and await self.registry.add(session):
                session.start()
                return True
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
            wake.set()
