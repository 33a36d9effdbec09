"""The daemon's long-running loops (reconcile, control, heartbeat, reload, watchdog), kept alive, and the pacing
of retries: :func:`backoff_delay` and :class:`RestartBudget`.

Each loop is a ``step`` coroutine function run again and again in a task of its own; a step does one pass and
its own waiting. Redis trouble is each step's business (it knows whether to retry quietly). Anything else a
step raises is a bug or garbage nobody foresaw: it is logged with its traceback and the loop goes on after a
growing pause (1 s doubling to 30 s, so never a hot loop), rather than the task dying silently while
``/healthz`` and the watchdog stay green. A loop that ends anyway (only cancellation, or ``BaseException``,
gets past the guard) is recorded in :meth:`Loops.problems`: ``/healthz`` then answers 503 and the watchdog
stops pinging, so systemd restarts the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from typing import Awaitable, Callable, Iterable

log = logging.getLogger("supervisor")

Step = Callable[[], Awaitable[None]]

ERROR_PAUSE_BASE = 1.0
ERROR_PAUSE_MAX = 30.0


def backoff_delay(failures: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Capped exponential backoff with jitter: ``min(cap, base * 2**(failures-1))`` times 0.5..1."""
    if failures <= 0:
        return 0.0
    ceiling = min(cap, base * 2 ** min(failures - 1, 30))
    return ceiling * (0.5 + 0.5 * rand())


class RestartBudget:
    """At most ``budget`` restarts within any ``window`` seconds."""

    def __init__(self, budget: int, window: float) -> None:
        self.budget = budget
        self.window = window
        self._times: deque[float] = deque()

    def spend(self, now: float) -> bool:
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        if len(self._times) >= self.budget:
            return False
        self._times.append(now)
        return True


async def sleep_unless(event: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``event`` is set meanwhile."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except asyncio.TimeoutError:
        pass


class Loops:
    def __init__(self, on_error: Callable[[], None] = lambda: None) -> None:
        self._on_error = on_error
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping: set[str] = set()
        self.ended: dict[str, str] = {}  # loop name -> how it ended

    def start(self, name: str, step: Step) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._forever(name, step), name=name)
        task.add_done_callback(self._done)
        self._tasks[name] = task
        return task

    async def _forever(self, name: str, step: Step) -> None:
        failures = 0
        while True:
            pause = 0.0
            try:
                await step()
                failures = 0
            except Exception:  # noqa: BLE001 - a loop must outlive any one bad pass
                failures += 1
                self._on_error()
                pause = backoff_delay(failures, ERROR_PAUSE_BASE, ERROR_PAUSE_MAX, rand=lambda: 1.0)
                log.exception("loop %s: unexpected error (%d in a row); going on in %.0fs", name, failures, pause)
            if pause:
                await asyncio.sleep(pause)

    def _done(self, task: asyncio.Task[None]) -> None:
        name = task.get_name()
        if name in self._stopping:
            return
        how = "cancelled" if task.cancelled() else repr(task.exception() or "returned")
        self.ended[name] = how
        log.error("loop %s ended (%s): the daemon is unhealthy now; /healthz answers 503 and the watchdog stops "
                  "pinging", name, how)

    def problems(self) -> list[str]:
        """One line per loop that ended without being asked to (empty: all is well)."""
        return [f"loop {name} ended ({how})" for name, how in sorted(self.ended.items())]

    async def stop(self, names: Iterable[str] | None = None) -> None:
        """Cancel the named loops (all when None) and wait for them."""
        chosen = list(self._tasks) if names is None else [n for n in names if n in self._tasks]
        self._stopping.update(chosen)
        tasks = [self._tasks.pop(n) for n in chosen]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
