"""The daemon's load, and how many new rooms it may take (admission by load).

One daemon runs every room on one asyncio thread, so what limits it is that thread: the share of one core it
uses and how late its event loop runs callbacks. :class:`LoopMonitor` measures both over a sliding window:

- ``cpu``: CPU seconds of the event-loop thread (``time.thread_time``) per wall second, 0..1;
- loop lag: how late a timer set every :data:`TICK` seconds fires; its median, 99th percentile and maximum.

``load = max(cpu, lag_p99 / LAG_AT_FULL_LOAD)``, like LiveKit Agents' worker load (0..1, 0.7 by default is the
line): a loop whose p99 lateness reaches :data:`LAG_AT_FULL_LOAD` counts as full whatever its CPU says (the host
may be short of CPU for other reasons). The heartbeat, ``/metrics`` and ``room-supervisor rooms`` show it.

:func:`allowance` decides how many of the rooms that are due a daemon claims in one reconcile pass: as many
as fit under ``daemon.load_threshold`` at the cost each room of this daemon has shown (its load over its
settled rooms), counting rooms that started within the window at that cost too, since their cost is not in
the measured load yet; a daemon with no settled room assumes :data:`UNMEASURED_ROOM`. Rooms it declines stay
desired and due: another daemon with room to spare takes them. ``daemon.max_rooms`` stays a hard cap.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass

TICK = 0.05  # s between loop-lag samples: 200 samples in a 10 s window, enough for a p99
WINDOW = 10.0  # s over which load is measured
LAG_AT_FULL_LOAD = 0.05  # s of p99 loop lag that counts as load 1.0 (a voice frame is 20 ms)
UNMEASURED_ROOM = 0.02  # load one room adds, assumed until this daemon has rooms to measure
MIN_ROOM_COST = 0.002  # never assume a room costs less than this (idle rooms measure close to nothing)


@dataclass(frozen=True)
class Load:
    load: float = 0.0
    cpu: float = 0.0
    lag_p50: float = 0.0
    lag_p99: float = 0.0
    lag_max: float = 0.0


class LoopMonitor:
    """Samples the event loop's lateness every ``period`` seconds and the loop thread's CPU, over ``window``."""

    def __init__(self, period: float = TICK, window: float = WINDOW) -> None:
        self.period = period
        self._window = window
        self._lags: deque[tuple[float, float]] = deque()  # (monotonic time, lag)
        self._cpu: deque[tuple[float, float]] = deque()  # (monotonic time, thread CPU seconds)
        self._last_tick = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="loop-monitor")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.period
            await asyncio.sleep(self.period)
            self._sample(time.monotonic(), max(0.0, loop.time() - expected), time.thread_time())

    def _sample(self, now: float, lag: float, cpu_seconds: float) -> None:
        self._last_tick = now
        self._lags.append((now, lag))
        self._cpu.append((now, cpu_seconds))
        while self._lags and self._lags[0][0] < now - self._window:
            self._lags.popleft()
        while len(self._cpu) > 2 and self._cpu[0][0] < now - self._window:
            self._cpu.popleft()

    def lag(self) -> float:
        """The largest lag seen recently, counting the time since the last tick if it is overdue."""
        overdue = time.monotonic() - self._last_tick - self.period
        return max([overdue, *(lag for _, lag in self._lags)])

    def load(self) -> Load:
        return self._load_at(time.monotonic())

    def _load_at(self, now: float) -> Load:
        lags = sorted(lag for _, lag in self._lags)
        overdue = max(0.0, now - self._last_tick - self.period)
        cpu = 0.0
        if len(self._cpu) >= 2:
            (t0, c0), (t1, c1) = self._cpu[0], self._cpu[-1]
            cpu = min(1.0, (c1 - c0) / (t1 - t0)) if t1 > t0 else 0.0
        p50, p99 = _percentile(lags, 0.50), max(_percentile(lags, 0.99), overdue)
        return Load(load=max(cpu, p99 / LAG_AT_FULL_LOAD), cpu=cpu, lag_p50=p50, lag_p99=p99,
                    lag_max=max([overdue, *lags]))


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def allowance(load: float, threshold: float, settled: int, recent: int) -> int:
    """How many more rooms fit under ``threshold``: ``settled`` rooms have run for a whole window (their cost
    is in ``load``), ``recent`` started within it. Pure: the reconcile pass asks it once per pass."""
    per_room = max(load / settled, MIN_ROOM_COST) if settled else UNMEASURED_ROOM
    projected = load + recent * per_room
    if projected >= threshold:
        return 0
    return int((threshold - projected) / per_room)
