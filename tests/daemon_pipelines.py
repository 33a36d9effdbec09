"""Pipelines for daemon tests, registered by name in the daemon's config (``tests/daemonproc.py``
``TEST_PIPELINES``: ``slow_leave = "tests.daemon_pipelines:slow_leave"``)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from pipecat.processors.frame_processor import FrameProcessor

from transport.pipelines import DiscardAudio

if os.environ.get("TESTS_IMPORT_LOG"):  # tests prove what a process imported (test_pipelines_named)
    with open(os.environ["TESTS_IMPORT_LOG"], "a", encoding="utf-8") as _log:
        _log.write(f"{__name__} {os.getpid()}\n")


def slow_leave(transport: Any, spec: Any) -> list[FrameProcessor]:
    """``listen`` whose ``on_before_disconnect`` handler takes a minute: a drain has to wait for it."""

    @transport.event_handler("on_before_disconnect")
    async def _slow(_transport: Any) -> None:
        await asyncio.sleep(60)

    return [DiscardAudio()]
