"""Runs one real ``run_session`` (recording transport, real LiveKit, real Redis) for transport tests."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from eventstore.connection import connect
from eventstore.reader import RoomReader
from eventstore.records import Record, tag_of
from eventstore.writer import EventWriter
from harness.livekit_server import API_KEY, API_SECRET
from harness.util import async_wait_until
from transport.session import SessionOutcome, SessionSpec, run_session
from transport.tokens import bot_identity

import tests.pipelines as test_pipelines
from daemonproc import TEST_PIPELINES


class BotSession:
    def __init__(self, redis_url: str, livekit_url: str, room: str, pipeline: str = "handlers",
                 **spec: Any) -> None:
        """``pipeline`` is a name: built in, or one of ``TEST_PIPELINES`` (unless ``pipelines=`` says else)."""
        spec.setdefault("pipelines", TEST_PIPELINES)
        self.redis = connect(redis_url)
        self.writer = EventWriter(self.redis, producer="test")
        self.reader = RoomReader(self.redis)
        self.room = room
        self.stop_event = asyncio.Event()
        self.spec = SessionSpec(room=room, session_id=uuid.uuid4().hex[:12], identity=bot_identity(), epoch=0,
                                producer="test", pipeline=pipeline, livekit_url=livekit_url, api_key=API_KEY,
                                api_secret=API_SECRET, **spec)
        self.task: asyncio.Task[SessionOutcome] | None = None
        self.outcome: SessionOutcome | None = None

    @property
    def identity(self) -> str:
        return self.spec.identity

    @property
    def handler_calls(self) -> list[tuple[str, tuple[Any, ...]]]:
        return test_pipelines.HANDLER_CALLS[self.room]

    async def start(self, timeout: float = 40.0) -> BotSession:
        await self.writer.start()
        self.task = asyncio.get_running_loop().create_task(run_session(self.spec, self.writer, self.stop_event))
        await self.wait_for("connected", timeout=timeout)
        return self

    async def records(self) -> list[Record]:
        await self.writer.flush(10)
        return await self.reader.read(self.room)

    async def types(self) -> list[str]:
        return [tag_of(r) for r in await self.records()]

    async def wait_for(self, tag: str, *, count: int = 1, timeout: float = 30.0, **fields: Any) -> list[Record]:
        async def found():
            if self.task is not None and self.task.done() and tag != "session_ended":
                self.task.result()
            recs = [r for r in await self.records() if tag_of(r) == tag
                    and all(getattr(r, k) == v for k, v in fields.items())]
            return recs if len(recs) >= count else None

        return await async_wait_until(found, timeout, f"record {tag} x{count} {fields}", interval=0.1)

    async def wait_handler(self, event: str, *args: Any, timeout: float = 20.0) -> tuple[Any, ...]:
        def found():
            return next(([a] for e, a in self.handler_calls if e == event and (not args or a == args)), None)

        return (await async_wait_until(found, timeout, f"handler {event}{args}", interval=0.05))[0]

    async def stop(self, timeout: float = 30.0) -> SessionOutcome:
        if self.task is None:
            raise RuntimeError("not started")
        self.stop_event.set()
        self.outcome = await asyncio.wait_for(self.task, timeout)
        return self.outcome

    async def wait_outcome(self, timeout: float = 30.0) -> SessionOutcome:
        assert self.task is not None
        self.outcome = await asyncio.wait_for(asyncio.shield(self.task), timeout)
        return self.outcome

    async def aclose(self) -> None:
        if self.task is not None and not self.task.done():
            self.stop_event.set()
            try:
                await asyncio.wait_for(self.task, 30)
            except Exception:
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)
        await self.writer.aclose()
        await self.redis.aclose()
