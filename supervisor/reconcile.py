"""Reconciling: turn desired state into room sessions of one daemon.

One pass reads ``rs:desired``, stops sessions of rooms no longer desired (or marked failed), restarts those
whose pipeline changed, and claims the leases of desired rooms nobody holds, oldest desire first, up to
``max_rooms``; each granted claim becomes a RoomSession. Claims go out pipelined, one round trip per batch.
Control commands (``rs:control``) only wake the loop early: the hash is the state.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from .control import Control, DesiredState
from .leases import Leases
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
        self._unreadable: list[str] = []

    async def once(self) -> DesiredState:
        """One pass; returns the desired state it acted on."""
        desired = await self.control.desired()
        held = await self.registry.sessions()
        for room, session in held.items():
            want = desired.rooms.get(room)
            if session.stopping or session.task is None or session.task.done():
                continue
            if want is None or want.failed:
                session.request_stop("left")
            elif want.pipeline != session.pipeline:
                session.request_restart(want)
        self._warn_unreadable(desired)
        await self._claim_rooms(desired, held)
        return desired

    def _warn_unreadable(self, desired: DesiredState) -> None:
        if desired.unreadable != self._unreadable:
            self._unreadable = desired.unreadable
            if desired.unreadable:
                log.warning("daemon %s: desired-state entries that are not room JSON are skipped: %r",
                            self.daemon_id, desired.unreadable[:10])

    async def _claim_rooms(self, desired: DesiredState, held: dict[str, RoomSession]) -> None:
        loop = asyncio.get_running_loop()
        free = self._settings().daemon.max_rooms - len(held)
        wanted = sorted((d.since, room) for room, d in desired.rooms.items() if room not in held and not d.failed)
        candidates = [room for _, room in wanted]
        while free > 0 and candidates and not self._draining():
            chunk, candidates = candidates[:free], candidates[free:]
            sent = loop.time()
            for room, claim in zip(chunk, await self.leases.claim_many(chunk)):
                if not claim.granted:
                    continue
                session = RoomSession(room, desired.rooms[room], claim, sent, self._context())
                if self._draining() or not await self.registry.add(session):
                    await self.leases.release(room, claim.epoch)
                    continue
                session.start()
                free -= 1

    async def watch_commands(self, wake: asyncio.Event) -> None:
        """Set ``wake`` whenever a control command arrives. Runs until cancelled."""
        last = None
        while True:
            try:
                if last is None:
                    last = await self.control.last_command_id()
                now = await self.control.wait_command(last, block_ms=2000)
                if now != last:
                    last = now
                    wake.set()
            except REDIS_TROUBLE:
                await asyncio.sleep(1.0)
