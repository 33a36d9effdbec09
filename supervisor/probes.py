"""Health probes of the daemon: does Redis answer, does LiveKit answer, does the event loop keep up, are its
long-running loops all still there."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Callable

import redis.asyncio as aioredis
from livekit import api as lkapi

from .http import Health
from .metrics import DaemonMetrics
from .redisutil import REDIS_TROUBLE

log = logging.getLogger("supervisor")

REDIS_TIMEOUT = 2.0
LIVEKIT_TIMEOUT = 3.0
MAX_LOOP_LAG = 2.0  # seconds: a loop this late cannot keep sessions, leases and the watchdog going


class LoopMonitor:
    """Measures how late the event loop runs a callback scheduled every ``period`` seconds."""

    def __init__(self, period: float = 0.25, window: float = 10.0) -> None:
        self.period = period
        self._lags: deque[tuple[float, float]] = deque()
        self._window = window
        self._last_tick = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="loop-monitor")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.period
            await asyncio.sleep(self.period)
            now = time.monotonic()
            self._last_tick = now
            self._lags.append((now, max(0.0, loop.time() - expected)))
            while self._lags and self._lags[0][0] < now - self._window:
                self._lags.popleft()

    def lag(self) -> float:
        """The largest lag seen recently, counting the time since the last tick if it is overdue."""
        overdue = time.monotonic() - self._last_tick - self.period
        return max([overdue, *(lag for _, lag in self._lags)])


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
