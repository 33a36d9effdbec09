"""The daemon's tiny asyncio HTTP/1.1 endpoint, one request per connection: ``GET /healthz``, ``GET /metrics`` and,
with ``[webhooks] enabled``, ``POST <webhooks.path>`` (LiveKit's webhooks, see :mod:`supervisor.daemon.webhooks`).

Requests are bounded: a head of at most :data:`MAX_HEAD` bytes, a body of at most :data:`MAX_BODY` bytes with a
``Content-Length`` (no chunked bodies: LiveKit sends a length), each read within :data:`READ_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST

from .health import Health

log = logging.getLogger("supervisor")

MAX_HEAD = 8192
MAX_BODY = 256 * 1024
READ_TIMEOUT = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            411: "Length Required", 413: "Payload Too Large", 503: "Service Unavailable"}

HealthProbe = Callable[[], Awaitable[Health]]
MetricsRender = Callable[[], bytes]
# (body, headers with lower-case names) -> (status, plain-text body)
PostHandler = Callable[[bytes, dict[str, str]], Awaitable[tuple[int, bytes]]]
PostRoutes = Callable[[], dict[str, PostHandler]]  # the current path -> handler (settings may change on SIGHUP)


class _BadRequest(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


class HttpEndpoint:
    def __init__(self, host: str, port: int, health: HealthProbe, metrics: MetricsRender,
                 posts: PostRoutes = dict) -> None:
        self.host = host
        self.port = port
        self._health = health
        self._metrics = metrics
        self._posts = posts
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0 in tests)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("http endpoint on %s:%d (/healthz, /metrics%s)", self.host, self.port,
                 "".join(", POST " + path for path in self._posts()))
        return self.port

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            status, ctype, body = await self._respond(head, reader)
        except _BadRequest as exc:
            status, ctype, body = exc.status, "text/plain", str(exc).encode() + b"\n"
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

    async def _respond(self, head: bytes, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method == b"POST":
            handler = self._posts().get(target.decode("latin-1"))
            if handler is None:
                return 404, "text/plain", b"no such path\n"
            headers = _headers(lines[1:])
            body = await _body(headers, reader)
            status, text = await handler(body, headers)
            return status, "text/plain", text
        if method != b"GET":
            return 405, "text/plain", b"only GET, and POST to the webhook path\n"
        if target == b"/healthz":
            health = await self._health()
            return (200 if health.ok else 503), "application/json", health.body()
        if target == b"/metrics":
            return 200, CONTENT_TYPE_LATEST, self._metrics()
        return 404, "text/plain", b"try /healthz or /metrics\n"


def _headers(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, "malformed header line")
        headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
    return headers


async def _body(headers: dict[str, str], reader: asyncio.StreamReader) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise _BadRequest(411, "send a Content-Length, not a chunked body")
    raw = headers.get("content-length")
    if raw is None:
        raise _BadRequest(411, "Content-Length required")
    if not raw.isdigit():
        raise _BadRequest(400, "bad Content-Length")
    size = int(raw)
    if size > MAX_BODY:
        raise _BadRequest(413, f"body over {MAX_BODY} bytes")
    return await asyncio.wait_for(reader.readexactly(size), READ_TIMEOUT)
