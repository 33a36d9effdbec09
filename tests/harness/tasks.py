"""Fail a test that leaves asyncio tasks behind (created during the test, still pending after teardown)."""

from __future__ import annotations

import asyncio
import time

import pytest

GRACE_S = 2.0


def _describe(task: asyncio.Task) -> str:
    coro = task.get_coro()
    where = getattr(coro, "__qualname__", repr(coro))
    return f"{task.get_name()} ({where})"


@pytest.fixture
async def _rs_task_guard():
    loop = asyncio.get_running_loop()
    before = set(asyncio.all_tasks(loop))
    yield

    def leaked() -> list[asyncio.Task]:
        me = asyncio.current_task()
        return [t for t in asyncio.all_tasks(loop) if t not in before and t is not me and not t.done()]

    # Tasks that were cancelled during teardown may need a few loop turns to finish: poll, bounded.
    deadline = time.monotonic() + GRACE_S
    while leaked() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    left = leaked()
    if left:
        names = sorted(_describe(t) for t in left)
        for t in left:
            t.cancel()
        await asyncio.wait(left, timeout=5)
        pytest.fail(f"test leaked {len(left)} asyncio task(s): {names}", pytrace=False)


@pytest.fixture(autouse=True)
def _rs_no_leaked_tasks(request: pytest.FixtureRequest):
    """Autouse: for async tests, pull in :func:`_rs_task_guard` first so its teardown runs last."""
    if request.node.get_closest_marker("asyncio") is not None and "no_task_guard" not in request.keywords:
        request.getfixturevalue("_rs_task_guard")
    yield
