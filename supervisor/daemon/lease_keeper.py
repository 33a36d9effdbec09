"""LeaseKeeper: keeps every room lease of one daemon, and keeps calls going while Redis is away.

One task renews all the leases the daemon holds in one pipelined round trip, every third of the lease TTL
(the claimable index moves with them). What a renewal can learn:

- Redis answers and the lease is ours: renewed (also after it expired, as long as nobody claimed it: the same
  epoch, so no other writer can have written). This is how leases are re-asserted after an outage.
- Redis answers that the lease is not ours any more: a *confirmed* loss; that room's session stops at once.
- Redis does not answer (down, frozen, restarting, failing over): *nothing is stopped*. A call must not hear a
  blip of the shared store: the append script fences stale epochs, and a daemon that takes a room over
  removes the previous bot through LiveKit, so stopping would add no safety. Each room's stream gets a
  ``store_unavailable`` record, and a ``store_restored`` one with the outage's length once Redis answers
  (both are written late, in order, from the writer's memory or spool). While Redis is away the keeper
  probes it every :data:`PROBE_INTERVAL` seconds so that leases are re-asserted quickly.
- Still no answer after ``daemon.outage_grace`` seconds: the daemon looks at LiveKit, and a room where another
  bot of ours is listed (a daemon that could reach Redis took it over and could not remove this one) is given
  up: that session stops (``stepped_aside``). Rooms with no other bot of ours keep their calls, however long
  the outage lasts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from livekit import api as lkapi

from eventstore.connection import drop_idle_connections

from ..errors import REDIS_TROUBLE
from .bots import LiveKitUnreachable, bots_in
from .leases import Leases
from .metrics import DaemonMetrics
from .registry import SessionRegistry
from .session import RoomSession

log = logging.getLogger("supervisor")

PROBE_INTERVAL = 0.5  # s: how often an unreachable Redis is tried again


class LeaseKeeper:
    def __init__(self, leases: Leases, registry: SessionRegistry[RoomSession], metrics: DaemonMetrics,
                 outage_grace: Callable[[], float], livekit: lkapi.LiveKitAPI | None, daemon_id: str) -> None:
        self.leases = leases
        self.registry = registry
        self.metrics = metrics
        self._grace = outage_grace
        self.livekit = livekit
        self.daemon_id = daemon_id
        self.down_since: float | None = None  # wall-clock start of the current outage
        self._down_at = 0.0  # the same in loop time
        self._noted: set[RoomSession] = set()  # sessions whose stream got store_unavailable for this outage

    @property
    def store_ok(self) -> bool:
        return self.down_since is None

    async def step(self) -> None:
        """One round: renew every held lease, then wait for the next round (the daemon's loop runs it)."""
        loop = asyncio.get_running_loop()
        interval = self.leases.ttl / 3
        held = [s for s in (await self.registry.sessions()).values() if s.holds_lease]
        if held:
            sent = loop.time()
            try:
                expiries = await self._renew(held, interval)
            except REDIS_TROUBLE as exc:
                await self._unreachable(held, exc)
                await asyncio.sleep(PROBE_INTERVAL)
                return
            await self._renewed(held, expiries, sent)
        elif self.down_since is not None:
            self._back()
        await asyncio.sleep(interval)

    async def _renew(self, held: list[RoomSession], timeout: float) -> list[int]:
        """Renew the leases of ``held``; a failure is tried again at once (a pooled connection that died with an
        earlier Redis process fails once and is replaced), unless Redis is known to be away already."""
        pairs = [(s.room, s.epoch) for s in held]
        try:
            return await asyncio.wait_for(self.leases.renew_many(pairs), timeout)
        except REDIS_TROUBLE:
            if self.down_since is not None:
                raise
        return await asyncio.wait_for(self.leases.renew_many(pairs), timeout)

    async def _renewed(self, held: list[RoomSession], expiries: list[int], sent: float) -> None:
        kept = []
        for session, expires in zip(held, expiries):
            if expires:
                session.last_renewed = sent
                kept.append(session)
            elif session.holds_lease:  # (not one that released its lease meanwhile)
                session.lose("lease taken over by another daemon")
        if self.down_since is not None:
            await self._restored(kept)

    async def _unreachable(self, held: list[RoomSession], exc: BaseException) -> None:
        now = time.time()
        if self.down_since is None:
            self.down_since, self._down_at = now, asyncio.get_running_loop().time()
            self.metrics.store_down.set(1)
            self.metrics.errors.labels("redis").inc()
            log.warning("daemon %s: Redis does not answer (%s); %d sessions go on, their records wait in memory "
                        "and then in the spool, leases are re-asserted when Redis answers", self.daemon_id,
                        _short(exc), len(held))
        detail = f"lease renewal failed: {_short(exc)}"
        for session in held:
            if session not in self._noted:
                self._noted.add(session)
                await session.store_unavailable(self.down_since, detail)
        if asyncio.get_running_loop().time() - self._down_at >= self._grace():
            await self._step_aside(held)

    async def _restored(self, kept: list[RoomSession]) -> None:
        assert self.down_since is not None
        # Idle pooled connections may belong to the Redis process that went away: drop them now, rather than
        # have each fail once in some other loop.
        await drop_idle_connections(self.leases.redis)
        since, down_for = self.down_since, time.time() - self.down_since
        for session in kept:
            if session in self._noted:
                await session.store_restored(since, down_for)
        log.info("daemon %s: Redis answers again after %.1fs; %d leases re-asserted", self.daemon_id, down_for,
                 len(kept))
        self._back()

    def _back(self) -> None:
        self.down_since = None
        self._noted.clear()
        self.metrics.store_down.set(0)

    async def _step_aside(self, held: list[RoomSession]) -> None:
        """Past the grace: give up rooms where LiveKit lists another bot of ours."""
        if self.livekit is None:
            return
        down_for = time.time() - (self.down_since or time.time())
        for session in held:
            try:
                others = [b for b in await bots_in(self.livekit, session.room) if b != session.identity]
            except LiveKitUnreachable:
                continue  # nobody can tell; the call goes on
            if others:
                session.lose(f"Redis unreachable for {down_for:.0f}s and another bot of ours ({', '.join(others)}) "
                             "is in the room: stepping aside", reason="stepped_aside")


def _short(exc: BaseException) -> str:
    text = str(exc)
    return (f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} (no answer in time)")[:200]
