"""The daemon as a LiveKit agent worker: the worker WebSocket protocol, small (what livekit-agents' ``worker.py``
speaks, without its process pool).

One connection at a time to ``<livekit.url>/agent`` with a token granting ``agent``; each message is one protobuf
(``livekit.protocol.agent``) in a binary frame. After ``RegisterWorkerRequest`` (type ``JT_ROOM``, the
``dispatch.agent_name``: empty = automatic dispatch, a job for every new room) the server sends:

- ``AvailabilityRequest``: answered within LiveKit's deadline (~2.5 s) from the daemon's admission (max_rooms,
  load, draining) by :class:`~supervisor.daemon.jobs.JobTaker`, which also names the bot's identity;
- ``JobAssignment``: the job and a token for that identity; the room becomes desired and this daemon's session
  starts (``JobTaker.assign``); a failure is reported at once as ``JS_FAILED``;
- ``JobTermination``: the dispatch was deleted or the room closed (``JobTaker.terminate``).

The worker reports ``UpdateWorkerStatus`` every :data:`STATUS_INTERVAL` s: ``WS_FULL`` while the daemon takes no new
room, else ``WS_AVAILABLE`` with a load: how full the daemon is (the larger of rooms / ``max_rooms`` and, with
admission by load on, load / ``load_threshold``) times ``dispatch.target_load`` (LiveKit's ``agents.target_load``,
0.7 by default: LiveKit offers jobs only to workers below it, chosen at random weighted by ``1 - load``), so that
LiveKit's limit and the daemon's own coincide. It also reports each job's end (``UpdateJobStatus``). The
connection is kept alive with WebSocket pings; when it drops the worker registers again (1 s .. 10 s). Sessions
never depend on the socket: LiveKit forgets a worker's jobs when its socket closes, but the rooms stay desired and
their bots stay. Messages that are not protobufs of the protocol are logged
and skipped; nothing the server sends chooses code beyond these message kinds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import aiohttp
from google.protobuf.message import DecodeError
from livekit import api
from livekit.protocol import agent

from ..settings import Settings
from .jobs import JobTaker
from .metrics import DaemonMetrics

log = logging.getLogger("supervisor")

STATUS_INTERVAL = 2.5  # s, as livekit-agents
REGISTER_TIMEOUT = 10.0  # s for the server's RegisterWorkerResponse
HEARTBEAT = 15.0  # s between WebSocket pings (a server that does not answer one in time is gone)
RETRY_MAX = 10.0  # s between registration attempts at most
FULL_LOAD = 0.999  # the highest load reported (LiveKit gives a worker at 1.0 a weight of 0)


class AgentWorker:
    def __init__(self, settings: Callable[[], Settings], taker: JobTaker, metrics: DaemonMetrics, daemon_id: str,
                 fullness: Callable[[], Awaitable[tuple[bool, float]]], version: str = "") -> None:
        self._settings = settings
        self.taker = taker
        self._metrics = metrics
        self.daemon_id = daemon_id
        self._fullness = fullness  # (takes no new room now, how full it is 0..1)
        self.version = version
        self.worker_id = ""
        self.registered = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._failures = 0
        self._tasks: set[asyncio.Task[None]] = set()
        taker.send_status = self.send_job_status

    def _url(self) -> str:
        url = self._settings().livekit.url.rstrip("/")
        for plain, ws in (("http://", "ws://"), ("https://", "wss://")):
            if url.startswith(plain):
                url = ws + url[len(plain):]
        return url + "/agent"

    def _token(self) -> str:
        lk = self._settings().livekit
        return api.AccessToken(lk.api_key, lk.api_secret).with_grants(api.VideoGrants(agent=True)).to_jwt()

    async def step(self) -> None:
        """One connection's life (the daemon's loop runs it again and again), then a pause before the next."""
        try:
            await self._connection()
            self._failures = 0
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ProtocolError) as exc:
            self._failures += 1
            level = logging.WARNING if self._failures in (1, 10) or self._failures % 60 == 0 else logging.DEBUG
            log.log(level, "daemon %s: agent worker: %s: %s; registering again", self.daemon_id,
                    type(exc).__name__, str(exc)[:300] or "connection failed")
        finally:
            self._ws = None
            if self.registered.is_set():
                self.registered.clear()
                self._metrics.worker_up.set(0)
        await asyncio.sleep(min(RETRY_MAX, 1.0 * max(1, self._failures)))

    async def _connection(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_connect=10.0)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.ws_connect(
                self._url(), headers={"Authorization": f"Bearer {self._token()}"}, heartbeat=HEARTBEAT,
                autoping=True, max_msg_size=1 << 20) as ws:
            self._ws = ws
            await self._register(ws)
            status = asyncio.create_task(self._report_status(), name="agent-worker-status")
            try:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        await self._handle(msg.data)
                    elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                        break
                    elif msg.type == aiohttp.WSMsgType.ERROR:
                        raise ProtocolError(f"socket error: {ws.exception()!r}")
                    else:
                        log.warning("daemon %s: agent worker: skipped a %s message", self.daemon_id, msg.type.name)
            finally:
                status.cancel()
                await asyncio.gather(status, return_exceptions=True)
        raise ProtocolError(f"LiveKit closed the worker socket (code {ws.close_code})")

    async def _register(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        hooks = self._settings().dispatch
        await self._send(agent.WorkerMessage(register=agent.RegisterWorkerRequest(
            type=agent.JT_ROOM, agent_name=hooks.agent_name, version=self.version)))
        msg = await ws.receive(timeout=REGISTER_TIMEOUT)
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise ProtocolError(f"expected the registration answer, got a {msg.type.name} message")
        reply = _parse(msg.data)
        if reply is None or reply.WhichOneof("message") != "register":
            raise ProtocolError("expected the registration answer")
        self.worker_id = reply.register.worker_id
        self._failures = 0
        self.registered.set()
        self._metrics.worker_up.set(1)
        log.info("daemon %s: registered with LiveKit as agent worker %s (agent_name %r: %s)", self.daemon_id,
                 self.worker_id, hooks.agent_name, "explicit dispatch" if hooks.agent_name else "automatic dispatch")
        await self._send_status()

    async def _handle(self, data: bytes) -> None:
        msg = _parse(data)
        kind = msg.WhichOneof("message") if msg is not None else None
        if kind == "availability":
            # answered in a task: a slow Redis must not hold up the next message (LiveKit waits ~2.5 s at most)
            self._spawn(self._answer(msg.availability.job))
        elif kind == "assignment":
            self._spawn(self._assigned(msg.assignment.job, msg.assignment.token))
        elif kind == "termination":
            self._spawn(self.taker.terminate(msg.termination.job_id))
        elif kind == "pong" or kind == "register":
            pass
        else:
            log.warning("daemon %s: agent worker: skipped a message LiveKit sent (%s)", self.daemon_id,
                        kind or "not a ServerMessage")

    def _spawn(self, coro) -> None:  # noqa: ANN001 - a coroutine
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("daemon %s: agent worker: handling a message failed: %r", self.daemon_id, task.exception())

    async def _answer(self, job: agent.Job) -> None:
        reply = await self.taker.availability(job)
        await self._send(agent.WorkerMessage(availability=reply))

    async def _assigned(self, job: agent.Job, token: str) -> None:
        error = await self.taker.assign(job, token)
        if error:
            log.warning("daemon %s: job %s for room %r not taken: %s", self.daemon_id, job.id, job.room.name, error)
            self.taker.metrics.jobs.labels("failed").inc()
            self.send_job_status(job.id, agent.JS_FAILED, error)

    def send_job_status(self, job_id: str, status: int, error: str = "") -> None:
        """Tell LiveKit how a job ended (dropped when the socket is down: LiveKit forgot the job then)."""
        self._spawn(self._send(agent.WorkerMessage(update_job=agent.UpdateJobStatus(
            job_id=job_id, status=status, error=error[:500]))))

    async def _report_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            await self._send_status()

    async def _send_status(self) -> None:
        full, fraction = await self._fullness()
        target = self._settings().dispatch.target_load
        load = target if full else max(0.0, min(FULL_LOAD, fraction * target))
        await self._send(agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(
            status=agent.WS_FULL if full else agent.WS_AVAILABLE, load=load, job_count=len(self.taker.jobs))))

    async def _send(self, message: agent.WorkerMessage) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return
        try:
            await ws.send_bytes(message.SerializeToString())
        except (ConnectionError, aiohttp.ClientError) as exc:
            log.debug("daemon %s: agent worker: send failed: %r", self.daemon_id, exc)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class ProtocolError(Exception):
    """LiveKit's worker socket did not speak the protocol (or closed)."""


def _parse(data: bytes) -> agent.ServerMessage | None:
    try:
        return agent.ServerMessage.FromString(data)
    except (DecodeError, ValueError, TypeError):
        return None
