"""What a daemon reports while it runs: its status line (sd_notify), its heartbeat in Redis, and systemd's
watchdog pings. A part of :class:`supervisor.daemon.lifecycle.Daemon` (a mixin: it reads the daemon's state)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

from ..errors import REDIS_TROUBLE
from ..heartbeat import Heartbeat, load_fields, write_heartbeat

log = logging.getLogger("supervisor")


class DaemonReports:
    # the Daemon's attributes these methods read (set in Daemon.__init__ and _start)
    registry: Any
    state: str
    settings: Any
    probes: Any
    id: str
    instance: str
    monitor: Any
    reconciler: Any
    redis: Any
    keys: Any
    metrics: Any
    loops: Any
    notifier: Any
    _twin_checked: bool
    _started: float
    _predecessor: str
    _watchdog_silenced: bool

    async def _status(self) -> str:
        counts = await self.registry.count_by_state()
        running = counts.get("running", 0)
        other = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()) if state != "running" and n)
        return f"{self.state}: {running} rooms running" + (f", {other}" if other else "")

    async def _heartbeat_step(self) -> None:
        interval = max(0.5, min(5.0, self.settings.daemon.lease_ttl / 3))
        if self.state != "starting" and self.probes is not None:
            await self.probes.dependencies()  # keeps redis_ok/livekit_ok and their metrics current
        if not self._twin_checked:
            await asyncio.sleep(interval)  # another daemon may own this id; its heartbeat is not ours to replace
            return
        beat = Heartbeat(
            id=self.id, instance=self.instance, host=socket.gethostname(), pid=os.getpid(), state=self.state,
            started=self._started, updated=time.time(), max_rooms=self.settings.daemon.max_rooms,
            redis_ok=bool(self.probes and self.probes.redis_ok),
            livekit_ok=bool(self.probes and self.probes.livekit_ok), rooms=await self.registry.views(),
            **load_fields(self.monitor.load(), self.settings.daemon.load_threshold, self.reconciler.declined),
        )
        try:
            other = await asyncio.wait_for(write_heartbeat(self.redis, self.keys, beat, interval * 3), interval)
        except REDIS_TROUBLE:
            other = None
        if other is not None and other.instance == self._predecessor:
            other = None  # the first beat replaces the earlier run's
        if other is not None:
            self.metrics.errors.labels("internal").inc()
            log.error("daemon %s: another daemon with the same id is running (host %s, pid %s, instance %s): they "
                      "take each other's rooms; give each daemon its own daemon.id", self.id, other.host, other.pid,
                      other.instance)
        await asyncio.sleep(interval)

    async def _watchdog_step(self) -> None:
        """Ping systemd's watchdog, unless a loop has ended: then systemd should restart us."""
        problems = self.loops.problems()
        if not problems:
            self.notifier.watchdog()
        elif not self._watchdog_silenced:
            self._watchdog_silenced = True
            log.error("daemon %s: watchdog pings stop (%s); systemd will restart the daemon", self.id,
                      "; ".join(problems))
        await asyncio.sleep(self.settings.daemon.watchdog_interval or self.notifier.watchdog_interval or 1.0)

