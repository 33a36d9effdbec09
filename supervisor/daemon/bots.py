"""Our bots in LiveKit: making sure one that should be gone is gone, and one that should be there is.

- After every session the daemon confirms with LiveKit's RoomService that the bot left (``ensure_gone``): a
  disconnect that never reached the server (a process that exits right after ``room.disconnect()``, a lost
  signal connection) would otherwise leave the bot listed until the server notices the dead peer connection,
  about 20 s later. If it is still listed after a short wait, the daemon removes it.
- After a takeover (or a restarted daemon taking back its own rooms) the previous holder's bot can still be in
  the room: LiveKit notices a client that vanished (``kill -9``, a crashed host) only after about 15 s. The new
  holder removes every bot of ours it finds there before its own joins (``remove_other_bots``), so the room
  has one bot of ours, not two. Bots are ours when their identity starts with ``rs-bot-``.

A session whose bot LiveKit no longer lists joins again (:class:`PresenceCheck`). The rtc SDK can miss a disconnect. Measured after a LiveKit server restart: a bot that had rejoined the old
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
from typing import Awaitable, Protocol, TypeVar

import aiohttp
from livekit import api as lkapi

from transport.tokens import BOT_PREFIX

from .registry import Registered, SessionRegistry

log = logging.getLogger("supervisor")

CALL_TIMEOUT = 3.0  # s: one RoomService call
GONE_POLL = 0.1  # s: between two looks at whether a departing bot is still listed
GONE_WAIT = 1.0  # s: how long a departing bot may stay listed before it is removed
T = TypeVar("T")
LIVEKIT_TROUBLE = (lkapi.TwirpError, asyncio.TimeoutError, aiohttp.ClientError, OSError)


class LiveKitUnreachable(RuntimeError):
    """LiveKit's RoomService did not answer (in time)."""


async def _ask(call: Awaitable[T], what: str) -> T | None:
    """One RoomService call within :data:`CALL_TIMEOUT`: its answer, None for ``not_found``; anything else
    raises :class:`LiveKitUnreachable` saying ``what`` was asked."""
    try:
        return await asyncio.wait_for(call, CALL_TIMEOUT)
    except lkapi.TwirpError as exc:
        if exc.code == "not_found":
            return None
        raise LiveKitUnreachable(f"LiveKit refused to {what}: {exc}") from None
    except LIVEKIT_TROUBLE as exc:
        raise LiveKitUnreachable(f"LiveKit did not {what}: {exc!r}") from None


async def bots_in(livekit: lkapi.LiveKitAPI, room: str) -> list[str]:
    """Identities of our bots that LiveKit lists in ``room`` (a room LiveKit does not know has none).
    Raises :class:`LiveKitUnreachable`."""
    reply = await _ask(livekit.room.list_participants(lkapi.ListParticipantsRequest(room=room)),
                       f"list room {room!r}")
    return sorted(p.identity for p in reply.participants if p.identity.startswith(BOT_PREFIX)) if reply else []


async def listed(livekit: lkapi.LiveKitAPI, room: str, identity: str) -> bool:
    """Whether LiveKit lists ``identity`` in ``room``. Raises :class:`LiveKitUnreachable`."""
    request = lkapi.RoomParticipantIdentity(room=room, identity=identity)
    return await _ask(livekit.room.get_participant(request), f"look up {identity} in {room!r}") is not None


async def remove(livekit: lkapi.LiveKitAPI, room: str, identity: str) -> bool:
    """Ask LiveKit to remove ``identity`` from ``room``; False if it was not there. Raises
    :class:`LiveKitUnreachable`."""
    request = lkapi.RoomParticipantIdentity(room=room, identity=identity)
    return await _ask(livekit.room.remove_participant(request), f"remove {identity} from {room!r}") is not None


async def ensure_gone(livekit: lkapi.LiveKitAPI, room: str, identity: str, wait: float = GONE_WAIT) -> str:
    """Make sure LiveKit no longer lists the bot ``identity`` in ``room``: ``"left"`` (its disconnect reached
    the server within ``wait`` seconds) or ``"removed"`` (it was still listed, so it was removed). Raises
    :class:`LiveKitUnreachable` when that cannot be confirmed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while await listed(livekit, room, identity):
        if loop.time() >= deadline:
            await remove(livekit, room, identity)
            if await listed(livekit, room, identity):
                raise LiveKitUnreachable(f"{identity} is still listed in {room!r} after its removal")
            return "removed"
        await asyncio.sleep(GONE_POLL)
    return "left"


async def remove_other_bots(livekit: lkapi.LiveKitAPI, room: str) -> list[str]:
    """Remove every bot of ours from ``room`` (called before the new holder's bot joins); the identities
    removed. Raises :class:`LiveKitUnreachable`."""
    removed = []
    for identity in await bots_in(livekit, room):
        if await remove(livekit, room, identity):
            removed.append(identity)
    return removed


async def remove_all(livekit: lkapi.LiveKitAPI, bots: list[tuple[str, str]], seconds: float) -> tuple[int, int]:
    """Remove the bots ``(room, identity)`` in parallel within ``seconds`` (a forced exit cannot wait for them to
    leave: an exit right after a cut-short leave keeps a bot in LiveKit for ~20 s). Returns (removed or
    already gone, not confirmed)."""
    calls = [asyncio.ensure_future(remove(livekit, room, identity)) for room, identity in bots]
    if not calls:
        return 0, 0
    _, pending = await asyncio.wait(calls, timeout=seconds)
    for call in pending:
        call.cancel()
    results = await asyncio.gather(*calls, return_exceptions=True)
    failed = sum(1 for r in results if isinstance(r, BaseException))
    return len(results) - failed, failed


class Watched(Registered, Protocol):
    """What :class:`PresenceCheck` needs of a room session."""

    @property
    def identity(self) -> str: ...

    @property
    def running_for(self) -> float: ...

    def bot_missing(self) -> None: ...


INTERVAL = 10.0  # s between two looks at a session's bot
SETTLE = 15.0  # s a session runs before its bot is looked for (joining takes a while under load)
CONCURRENCY = 8


class PresenceCheck:
    def __init__(self, registry: SessionRegistry[Watched], livekit: lkapi.LiveKitAPI, *,
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

    async def _look(self, session: Watched) -> bool | None:
        """Whether LiveKit lists the session's bot (None: LiveKit does not answer)."""
        async with self._gate:
            try:
                return await listed(self.livekit, session.room, session.identity)
            except LiveKitUnreachable:
                return None
