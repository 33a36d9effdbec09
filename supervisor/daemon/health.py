"""The daemon's health: probes (does Redis answer, does LiveKit answer, does the event loop keep up, are its
long-running loops all still there), shown by the HTTP endpoint (:mod:`supervisor.daemon.http`) as
``GET /healthz``, with ``GET /metrics``.

``/healthz`` answers 200 only while Redis and LiveKit answer, the event loop keeps up and none of the daemon's
long-running loops has ended, else 503; the body is JSON saying what was checked and what is wrong.
``/metrics`` is Prometheus text.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping

import redis.asyncio as aioredis
from livekit import api as lkapi

from ..errors import REDIS_TROUBLE
from .load import LoopMonitor
from .metrics import DaemonMetrics

log = logging.getLogger("supervisor")



@dataclass
class Health:
    ok: bool
    checks: dict[str, object] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def body(self) -> bytes:
        return json.dumps({"ok": self.ok, "problems": self.problems, "checks": self.checks}).encode() + b"\n"


REDIS_TIMEOUT = 2.0
LIVEKIT_TIMEOUT = 3.0
MAX_LOOP_LAG = 2.0  # seconds: a loop this late cannot keep sessions, leases and the watchdog going


class Probes:
    def __init__(self, redis: aioredis.Redis, livekit: lkapi.LiveKitAPI, monitor: LoopMonitor,
                 metrics: DaemonMetrics, loop_problems: Callable[[], list[str]] = list) -> None:
        self._redis = redis
        self._loop_problems = loop_problems
        self.livekit = livekit
        self.monitor = monitor
        self.metrics = metrics
        self.redis_ok = False
        self.livekit_ok = False

    async def redis_problem(self) -> str:
        try:
            await asyncio.wait_for(self._redis.ping(), REDIS_TIMEOUT)
            self.redis_ok = True
            return ""
        except REDIS_TROUBLE as exc:
            self.redis_ok = False
            return f"redis: {type(exc).__name__}: {exc}"[:300]

    async def livekit_problem(self) -> str:
        try:
            await asyncio.wait_for(self.livekit.room.list_rooms(lkapi.ListRoomsRequest()), LIVEKIT_TIMEOUT)
            self.livekit_ok = True
            return ""
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means "LiveKit does not answer"
            self.livekit_ok = False
            return f"livekit: {type(exc).__name__}: {exc}"[:300]

    async def dependencies(self) -> list[str]:
        """Problems with Redis and LiveKit (empty: both answer). Updates the metrics."""
        problems = await asyncio.gather(self.redis_problem(), self.livekit_problem())
        for name, problem in zip(("redis", "livekit"), problems):
            self.metrics.dependency_up.labels(name).set(0 if problem else 1)
            if problem:
                self.metrics.errors.labels(name).inc()
        return [p for p in problems if p]

    async def health(self) -> Health:
        problems = await self.dependencies()
        lag = self.monitor.lag()
        if lag > MAX_LOOP_LAG:
            problems.append(f"event loop: {lag:.2f}s behind")
        ended = self._loop_problems()
        problems += ended
        checks = {"redis": self.redis_ok, "livekit": self.livekit_ok, "loop_lag_seconds": round(lag, 3),
                  "loops": not ended}
        return Health(not problems, checks, problems)


async def check_pipelines(registered: Mapping[str, str], daemon_id: str) -> dict[str, str]:
    """Import every registered pipeline (``[pipelines]`` and entry points; in a thread: imports are blocking
    I/O) and log each one that cannot be used, with its traceback, at once rather than when a room first runs
    it. Returns name -> why, for the broken ones (rooms naming them fail once with that reason)."""
    from transport.pipelines import check_registered

    usable, broken = await asyncio.to_thread(check_registered, registered)
    for name, exc in broken.items():
        details = getattr(exc, "details", "")
        log.error("daemon %s: pipeline %s cannot be used: %s%s", daemon_id, name, exc,
                  f"\n{details}" if details else "")
    log.info("daemon %s: pipelines ready: %s", daemon_id, ", ".join(usable) or "none")
    return {name: str(exc) for name, exc in broken.items()}
