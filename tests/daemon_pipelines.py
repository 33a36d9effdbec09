"""Pipelines for daemon tests, loaded by the daemon as ``tests.daemon_pipelines:NAME``."""

from __future__ import annotations

import asyncio
from typing import Any

from pipecat.processors.frame_processor import FrameProcessor

from transport.pipelines import DiscardAudio


def slow_leave(transport: Any, spec: Any) -> list[FrameProcessor]:
    """``listen`` whose ``on_before_disconnect`` handler takes a minute: a drain has to wait for it."""

    @transport.event_handler("on_before_disconnect")
    async def _slow(_transport: Any) -> None:
        await asyncio.sleep(60)

    return [DiscardAudio()]
