"""The daemon's long-running loops (reconcile, control, heartbeat, reload, watchdog), kept alive.

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
from typing import Awaitable, Callable, Iterable

from .session import backoff_delay

log = logging.getLogger("supervisor")

Step = Callable[[], Awaitable[None]]

ERROR_PAUSE_BASE = 1.0
ERROR_PAUSE_MAX = 30.0


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
