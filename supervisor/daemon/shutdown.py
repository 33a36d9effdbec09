"""The end of a daemon: waiting for room sessions within a bound, and the forced exit.

A drain (first SIGTERM) gives sessions ``drain_timeout`` to leave gracefully, cancels those still running and
gives them :data:`CANCEL_WAIT` more to leave LiveKit. A forced exit (a second SIGTERM, or SIGINT) cuts every one
of these waits to :data:`FORCED_WAIT`, gives the writer as long to send what it holds (the rest stays in its
spool, replayed by the next start), removes the bots from LiveKit
(:func:`remove_bots_now`), and the CLI ends the process: exit code 1, about a second
after the signal.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Iterable

from livekit import api as lkapi

from .bots import remove_all
from .session import RoomSession

log = logging.getLogger("supervisor")

CANCEL_WAIT = 5.0  # s: how long cancelled sessions get to leave LiveKit (the drain's own bound aside)
CLOSE_WAIT = 2.0  # s: the writer's last flush, and removing the heartbeat, at exit
FORCED_WAIT = 0.3  # s: the bound of each of those steps on a forced exit (second SIGTERM, SIGINT)
FORCED_REMOVE_WAIT = 0.6  # s: on a forced exit, how long LiveKit gets to remove the bots
LEFTOVER_WAIT = 3.0  # s: how long tasks still running after a drain (a library's) may take to end


async def wait_sessions(sessions: Iterable[RoomSession], seconds: float, force: asyncio.Event) -> list[RoomSession]:
    """Wait up to ``seconds`` for the sessions to end, at most :data:`FORCED_WAIT` once ``force`` is set;
    returns those still running."""
    tasks = {s.task: s for s in sessions if s.task is not None}
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending = {t for t in tasks if not t.done()}
    forced = loop.create_task(force.wait())
    try:
        while pending:
            left = start + (FORCED_WAIT if force.is_set() else seconds) - loop.time()
            if left <= 0:
                break
            _, pending = await asyncio.wait(pending | {forced}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(forced)
    finally:
        forced.cancel()
        await asyncio.gather(forced, return_exceptions=True)
    return [tasks[t] for t in pending]


async def cancel_sessions(sessions: Iterable[RoomSession], force: asyncio.Event) -> None:
    """Cancel the sessions (a cancelled session leaves LiveKit and records why) and give them
    :data:`CANCEL_WAIT`, or :data:`FORCED_WAIT` once ``force`` is set."""
    running = [s for s in sessions if s.task is not None and not s.task.done()]
    for session in running:
        assert session.task is not None
        session.task.cancel()
    await wait_sessions(running, CANCEL_WAIT, force)


async def leftovers_end(seconds: float) -> bool:
    """Cancel the tasks still running once the daemon is closed (pipecat's or rtc's, never ours: every session
    has ended) and wait for them at most ``seconds``: a task that ignores cancellation must not keep a drained
    daemon from exiting (asyncio would wait for it without bound). False if some did not end."""
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in left:
        task.cancel()
    if not left:
        return True
    _, pending = await asyncio.wait(left, timeout=seconds)
    if pending:
        log.warning("%d task(s) did not end after the drain (%s); exiting without them", len(pending),
                    ", ".join(sorted(t.get_name() for t in pending))[:500])
    return not pending


async def remove_bots_now(livekit: lkapi.LiveKitAPI, sessions: Iterable[RoomSession], daemon_id: str) -> None:
    """A forced exit cannot wait for bots to leave (an exit right after a cut-short leave keeps a bot in LiveKit
    for ~20 s): ask LiveKit to remove them all, in parallel, within :data:`FORCED_REMOVE_WAIT`."""
    bots = [(s.room, s.identity) for s in sessions if s.identity]
    removed, unconfirmed = await remove_all(livekit, bots, FORCED_REMOVE_WAIT)
    log.warning("daemon %s: forced exit: %d bot(s) removed from LiveKit, %d not confirmed", daemon_id, removed,
                unconfirmed)
