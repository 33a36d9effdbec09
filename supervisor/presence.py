"""PresenceCheck: a session whose bot LiveKit no longer lists joins again.

The rtc SDK can miss a disconnect. Measured after a LiveKit server restart: a bot that had rejoined the old
server while it was shutting down was disconnected when it stopped (the rtc engine logged ``ServerShutdown``),
but the Python ``Room`` never emitted ``disconnected``, so the session ran on for minutes with no bot in the
room. So every :data:`INTERVAL` seconds the daemon asks LiveKit's RoomService about each session that has been
running for a while; a bot that is not listed twice in a row makes its room end that session
(``session_ended`` reason ``bot_missing``, rejoin) and start a new one (cause ``rejoin``). One RoomService call
per room per interval, at most :data:`CONCURRENCY` at a time.
"""

from __future__ import annotations

import asyncio
import logging

from livekit import api as lkapi

from .ghosts import LiveKitUnreachable, listed
from .registry import SessionRegistry
from .session import RoomSession

log = logging.getLogger("supervisor")

INTERVAL = 10.0  # s between two looks at a session's bot
SETTLE = 15.0  # s a session runs before its bot is looked for (joining takes a while under load)
CONCURRENCY = 8


class PresenceCheck:
    def __init__(self, registry: SessionRegistry[RoomSession], livekit: lkapi.LiveKitAPI, *,
                 interval: float = INTERVAL, settle: float = SETTLE) -> None:
        self.registry = registry
        self.livekit = livekit
        self.interval, self.settle = interval, settle
        self._missing: dict[str, str] = {}  # room -> identity not listed at the last look
        self._gate = asyncio.Semaphore(CONCURRENCY)

    async def step(self) -> None:
        """One round over the running sessions, then the wait for the next (the daemon's loop runs it)."""
        sessions = [s for s in (await self.registry.sessions()).values() if s.running_for >= self.settle]
        seen = await asyncio.gather(*(self._look(s) for s in sessions))
        missing = {}
        for session, present in zip(sessions, seen):
            if present is not False:
                continue
            if self._missing.get(session.room) == session.identity:
                session.bot_missing()
            else:
                missing[session.room] = session.identity
        self._missing = missing
        await asyncio.sleep(self.interval)

    async def _look(self, session: RoomSession) -> bool | None:
        """Whether LiveKit lists the session's bot (None: LiveKit does not answer)."""
        async with self._gate:
            try:
                return await listed(self.livekit, session.room, session.identity)
            except LiveKitUnreachable:
                return None
