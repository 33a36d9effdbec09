"""PresenceCheck against a real LiveKit server: a session whose bot LiveKit does not list (twice in a row) is
told so; a bot that is listed, a session too young to look at, and one LiveKit cannot be asked about are not."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest
from livekit import api as lkapi

from harness.livekit_server import API_KEY, API_SECRET
from supervisor.daemon.bots import PresenceCheck
from supervisor.daemon.registry import SessionRegistry

pytestmark = [pytest.mark.livekit]


@dataclass
class FakeSession:
    """What PresenceCheck reads of a RoomSession, and what it calls."""

    room: str
    identity: str
    running_for: float = 60.0
    state: str = "running"
    missing: list[int] = field(default_factory=list)

    def bot_missing(self) -> None:
        self.missing.append(1)

    def view(self) -> dict[str, object]:
        return {}


async def test_a_bot_livekit_does_not_list_is_reported_after_two_looks(livekit_server, participant_factory):
    there = await participant_factory(f"rs-bot-{uuid.uuid4().hex[:8]}")
    livekit = lkapi.LiveKitAPI(livekit_server.url, API_KEY, API_SECRET, failover=False)
    try:
        registry: SessionRegistry[FakeSession] = SessionRegistry()
        present = FakeSession(there.room_name, there.identity)
        gone = FakeSession(f"gone-{uuid.uuid4().hex[:6]}", "rs-bot-00000000")
        young = FakeSession(f"young-{uuid.uuid4().hex[:6]}", "rs-bot-11111111", running_for=1.0)
        for s in (present, gone, young):
            assert await registry.add(s)
        check = PresenceCheck(registry, livekit, interval=0.0, settle=15.0)  # type: ignore[arg-type]
        await check.step()
        assert gone.missing == []  # once could be a race with a join; twice is not
        await check.step()
        assert (present.missing, gone.missing, young.missing) == ([], [1], [])
    finally:
        await livekit.aclose()

    unreachable = lkapi.LiveKitAPI("http://127.0.0.1:9", API_KEY, API_SECRET, failover=False)
    try:
        check = PresenceCheck(registry, unreachable, interval=0.0)  # type: ignore[arg-type]
        await check.step()
        await check.step()
        assert gone.missing == [1]  # nobody could say: nothing happens
    finally:
        await unreachable.aclose()
