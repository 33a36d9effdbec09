"""Our bots in LiveKit: making sure one that should be gone is gone.

- After every session the daemon confirms with LiveKit's RoomService that the bot left (``ensure_gone``): a
  disconnect that never reached the server (a process that exits right after ``room.disconnect()``, a lost
  signal connection) would otherwise leave the bot listed until the server notices the dead peer connection,
  about 20 s later. If it is still listed after a short wait, the daemon removes it.
- After a takeover (or a restarted daemon taking back its own rooms) the previous holder's bot can still be in
  the room: LiveKit notices a client that vanished (``kill -9``, a crashed host) only after about 15 s. The new
  holder removes every bot of ours it finds there before its own joins (``remove_other_bots``), so the room
  has one bot of ours, not two. Bots are ours when their identity starts with ``rs-bot-``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, TypeVar

import aiohttp
from livekit import api as lkapi

from transport.tokens import BOT_PREFIX

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
