"""A tiny asyncio HTTP/1.1 endpoint: ``GET /healthz`` and ``GET /metrics``; one request per connection.

``/healthz`` answers 200 only while Redis and LiveKit answer, the event loop keeps up and none of the daemon's
long-running loops has ended, else 503; the body is JSON saying what was checked and what is wrong.
``/metrics`` is Prometheus text.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST

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
