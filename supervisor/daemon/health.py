"""The daemon's health: probes (does Redis answer, does LiveKit answer, does the event loop keep up, are its
long-running loops all still there) and a tiny asyncio HTTP/1.1 endpoint that shows them: ``GET /healthz``
and ``GET /metrics``; one request per connection.

``/healthz`` answers 200 only while Redis and LiveKit answer, the event loop keeps up and none of the daemon's
long-running loops has ended, else 503; the body is JSON saying what was checked and what is wrong.
``/metrics`` is Prometheus text.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping

import redis.asyncio as aioredis
from livekit import api as lkapi
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import REDIS_TROUBLE
from .load import LoopMonitor
from .metrics import DaemonMetrics

log = logging.getLogger("supervisor")

MAX_HEAD = 8192
READ_TIMEOUT = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


@dataclass
class Health:
    ok: bool
    checks: dict[str, object] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def body(self) -> bytes:
        return json.dumps({"ok": self.ok, "problems": self.problems, "checks": self.checks}).encode() + b"\n"


HealthProbe = Callable[[], Awaitable[Health]]
MetricsRender = Callable[[], bytes]


class HttpEndpoint:
    def __init__(self, host: str, port: int, health: HealthProbe, metrics: MetricsRender) -> None:
        self.host = host
        self.port = port
        self._health = health
        self._metrics = metrics
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0 in tests)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("http endpoint on %s:%d (/healthz, /metrics)", self.host, self.port)
        return self.port

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            status, ctype, body = await self._respond(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        try:
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
            )
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    async def _respond(self, head: bytes) -> tuple[int, str, bytes]:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method != b"GET":
            return 405, "text/plain", b"only GET\n"
        if target == b"/healthz":
            health = await self._health()
            return (200 if health.ok else 503), "application/json", health.body()
        if target == b"/metrics":
            return 200, CONTENT_TYPE_LATEST, self._metrics()
        return 404, "text/plain", b"try /healthz or /metrics\n"

REDIS_TIMEOUT = 2.0
LIVEKIT_TIMEOUT = 3.0
MAX_LOOP_LAG = 2.0  # seconds: a loop this late cannot keep sessions, leases and the watchdog going


class Probes:
    def __init__(self, redis: aioredis.Redis, livekit: lkapi.LiveKitAPI, monitor: LoopMonitor,
                 metrics: DaemonMetrics, loop_problems: Callable[[], list[str]] = list) -> None:
        self._redis = redis
        self._loop_problems = loop_problems
        self.livekit = livekit
        self.monitor = monitor
        self.metrics = metrics
        self.redis_ok = False
        self.livekit_ok = False

    async def redis_problem(self) -> str:
        try:
            await asyncio.wait_for(self._redis.ping(), REDIS_TIMEOUT)
            self.redis_ok = True
            return ""
        except REDIS_TROUBLE as exc:
            self.redis_ok = False
            return f"redis: {type(exc).__name__}: {exc}"[:300]

    async def livekit_problem(self) -> str:
        try:
            await asyncio.wait_for(self.livekit.room.list_rooms(lkapi.ListRoomsRequest()), LIVEKIT_TIMEOUT)
            self.livekit_ok = True
            return ""
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means "LiveKit does not answer"
            self.livekit_ok = False
            return f"livekit: {type(exc).__name__}: {exc}"[:300]

    async def dependencies(self) -> list[str]:
        """Problems with Redis and LiveKit (empty: both answer). Updates the metrics."""
        problems = await asyncio.gather(self.redis_problem(), self.livekit_problem())
        for name, problem in zip(("redis", "livekit"), problems):
            self.metrics.dependency_up.labels(name).set(0 if problem else 1)
            if problem:
                self.metrics.errors.labels(name).inc()
        return [p for p in problems if p]

    async def health(self) -> Health:
        problems = await self.dependencies()
        lag = self.monitor.lag()
        if lag > MAX_LOOP_LAG:
            problems.append(f"event loop: {lag:.2f}s behind")
        ended = self._loop_problems()
        problems += ended
        checks = {"redis": self.redis_ok, "livekit": self.livekit_ok, "loop_lag_seconds": round(lag, 3),
                  "loops": not ended}
        return Health(not problems, checks, problems)


async def check_pipelines(registered: Mapping[str, str], daemon_id: str) -> dict[str, str]:
    """Import every registered pipeline (``[pipelines]`` and entry points; in a thread: imports are blocking
    I/O) and log each one that cannot be used, with its traceback, at once rather than when a room first runs
    it. Returns name -> why, for the broken ones (rooms naming them fail once with that reason)."""
    from transport.pipelines import check_registered

    usable, broken = await asyncio.to_thread(check_registered, registered)
    for name, exc in broken.items():
        details = getattr(exc, "details", "")
        log.error("daemon %s: pipeline %s cannot be used: %s%s", daemon_id, name, exc,
                  f"\n{details}" if details else "")
    log.info("daemon %s: pipelines ready: %s", daemon_id, ", ".join(usable) or "none")
    return {name: str(exc) for name, exc in broken.items()}
