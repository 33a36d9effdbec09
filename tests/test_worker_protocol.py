"""The agent worker against a worker socket that sends garbage: a WebSocket server of this test on 127.0.0.1
speaks LiveKit's side of the protocol (what livekit-server v1.13.5 sends, see docs/livekit-facts.md), then frames
that are not the protocol. The worker skips them, stays registered, answers each availability request (declining a
room name LiveKit would not send, ending the job), takes an assigned job into desired state (real Redis), ends it on
termination, ignores assignments and terminations of jobs it never offered to take, and registers again after the
server closes the socket. Real tests of dispatch against livekit-server are in tests/test_dispatch.py."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import WSMsgType, web
from livekit.protocol import agent, models

from eventstore.connection import connect
from eventstore.keys import Keys
from harness.util import async_wait_until
from supervisor.control import Control, DesiredRoom
from supervisor.daemon.jobs import JobBook, JobTaker
from supervisor.daemon.metrics import DaemonMetrics
from supervisor.daemon.registry import SessionRegistry
from supervisor.daemon.worker import AgentWorker
from supervisor.settings import load_settings

pytestmark = [pytest.mark.timeout(60)]


class FakeLiveKit:
    """LiveKit's end of the worker socket, scripted by the test: every frame the worker sends is queued."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[agent.WorkerMessage] = asyncio.Queue()
        self.sockets: asyncio.Queue[web.WebSocketResponse] = asyncio.Queue()
        self.auth: list[str] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> FakeLiveKit:
        app = web.Application()
        app.router.add_get("/agent", self._agent)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def _agent(self, request: web.Request) -> web.WebSocketResponse:
        self.auth.append(request.headers.get("Authorization", ""))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await self.sockets.put(ws)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await self.received.put(agent.WorkerMessage.FromString(msg.data))
        return ws

    async def next(self, kind: str) -> agent.WorkerMessage:
        """The next message of ``kind`` the worker sent (status updates in between are skipped)."""
        while True:
            msg = await asyncio.wait_for(self.received.get(), 10)
            if msg.WhichOneof("message") == kind:
                return msg

    async def aclose(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def job(job_id: str, room: str) -> agent.Job:
    return agent.Job(id=job_id, dispatch_id="AD_" + job_id, type=agent.JT_ROOM, room=models.Room(name=room))


async def test_the_worker_survives_garbage_and_takes_and_ends_jobs(redis_url):
    server = await FakeLiveKit().start()
    settings = load_settings(environ={"REDIS_URL": redis_url, "LIVEKIT_URL": f"http://127.0.0.1:{server.port}"},
                             overrides={"dispatch": {"enabled": True, "agent_name": "tester"}})
    redis = connect(redis_url)
    control = Control(redis, Keys())
    started: list[tuple[str, DesiredRoom]] = []

    async def start(room: str, want: DesiredRoom) -> bool:
        started.append((room, want))
        return True

    async def room_for_one_more() -> bool:
        return True

    async def fullness() -> tuple[bool, float]:
        return False, 0.5

    metrics = DaemonMetrics()
    taker = JobTaker("test-daemon", control, SessionRegistry(), JobBook(), lambda: settings, metrics,
                     room_for_one_more, start)
    worker = AgentWorker(lambda: settings, taker, metrics, "test-daemon", fullness, "test")
    runs = asyncio.create_task(_forever(worker))
    try:
        ws = await asyncio.wait_for(server.sockets.get(), 10)
        assert server.auth[0].startswith("Bearer ")
        register = (await server.next("register")).register
        assert (register.agent_name, register.type) == ("tester", agent.JT_ROOM)
        await ws.send_bytes(agent.ServerMessage(register=agent.RegisterWorkerResponse(worker_id="AW_test"))
                            .SerializeToString())
        status = (await server.next("update_worker")).update_worker
        assert status.status == agent.WS_AVAILABLE and status.load == pytest.approx(0.35)  # 0.5 x target 0.7

        # garbage: none of it is the protocol; none of it may end the connection or choose what runs
        await ws.send_str("not a protobuf")
        await ws.send_bytes(b"\xff\xfe\x00garbage")
        await ws.send_bytes(b"")
        await ws.send_bytes(agent.ServerMessage(pong=agent.WorkerPong(last_timestamp=1)).SerializeToString())
        await ws.send_bytes(agent.ServerMessage(assignment=agent.JobAssignment(job=job("AJ_never", "r"), token="t"))
                            .SerializeToString())
        await ws.send_bytes(agent.ServerMessage(termination=agent.JobTermination(job_id="AJ_unknown"))
                            .SerializeToString())
        failed = (await server.next("update_job")).update_job  # the assignment it never offered to take
        assert (failed.job_id, failed.status) == ("AJ_never", agent.JS_FAILED)

        # a room LiveKit would not name: declined, and the job ended (no other worker should try)
        await ws.send_bytes(agent.ServerMessage(availability=agent.AvailabilityRequest(job=job("AJ_bad", "bad\x00")))
                            .SerializeToString())
        answer = (await server.next("availability")).availability
        assert (answer.job_id, answer.available, answer.terminate) == ("AJ_bad", False, True)

        # a good job: offered, assigned, taken into desired state, then terminated
        await ws.send_bytes(agent.ServerMessage(availability=agent.AvailabilityRequest(job=job("AJ_good", "room-1")))
                            .SerializeToString())
        answer = (await server.next("availability")).availability
        assert answer.available and answer.participant_identity.startswith("rs-bot-"), answer
        await ws.send_bytes(agent.ServerMessage(assignment=agent.JobAssignment(job=job("AJ_good", "room-1"),
                                                                               token="jwt")).SerializeToString())
        await async_wait_until(lambda: bool(started), 10, "the session started")
        room, want = started[0]
        assert (room, want.cause, want.job, want.dispatch, want.pipeline) == (
            "room-1", "dispatch", "AJ_good", "AD_AJ_good", "listen")
        assert taker.jobs.get("room-1").identity == answer.participant_identity
        # LiveKit offers the same room again (another dispatch): already supervised, so the job is ended
        await ws.send_bytes(agent.ServerMessage(availability=agent.AvailabilityRequest(job=job("AJ_2", "room-1")))
                            .SerializeToString())
        again = (await server.next("availability")).availability
        assert (again.available, again.terminate) == (False, True)
        await ws.send_bytes(agent.ServerMessage(termination=agent.JobTermination(job_id="AJ_good"))
                            .SerializeToString())
        await async_wait_until(lambda: _not_desired(control, "room-1"), 10, "room-1 no longer desired")
        assert worker.registered.is_set()

        # the server closes the socket: the worker registers again
        await ws.close()
        ws2 = await asyncio.wait_for(server.sockets.get(), 15)
        assert (await server.next("register")).register.agent_name == "tester"
        await ws2.close()
    finally:
        runs.cancel()
        await asyncio.gather(runs, return_exceptions=True)
        await worker.aclose()
        await server.aclose()
        await redis.aclose()


async def _forever(worker: AgentWorker) -> None:
    while True:
        await worker.step()


async def _not_desired(control: Control, room: str) -> bool:
    return await control.get(room) is None
