"""A real ``redis-server`` on a free 127.0.0.1 port with its own directory."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

from .util import free_port, tail, terminate, wait_until

READY_TIMEOUT = 15.0


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if not path:
        raise RuntimeError("redis-server not found: apt-get install -y redis-server (Redis >= 7.0)")
    return path


def _command(port: int, payload: bytes, timeout: float = 1.0) -> bytes:
    """Send one inline command to 127.0.0.1:port and return the first reply line."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        buf = b""
        while not buf.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        return buf


class RedisServer:
    """One redis-server process. ``start``/``restart`` keep the same port and directory.

    ``appendonly=True`` (with ``appendfsync always``) makes acknowledged writes survive ``kill()``.
    """

    def __init__(self, workdir: Path, *, appendonly: bool = False, port: int | None = None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _argv(self) -> list[str]:
        argv = [
            redis_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            "--save", "",
        ]
        if self.appendonly:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        return argv

    def start(self) -> RedisServer:
        if self.running:
            return self
        self.proc = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_until(self._ready, READY_TIMEOUT, f"redis-server on port {self.port}")
        except Exception as exc:
            terminate(self.proc)
            raise RuntimeError(f"redis-server did not start: {exc}\n--- redis.log ---\n{tail(self.log_path)}") from exc
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        return _command(self.port, b"PING\r\n").startswith(b"+PONG")

    def ping(self) -> bool:
        try:
            return _command(self.port, b"PING\r\n").startswith(b"+PONG")
        except OSError:
            return False

    def flushall(self) -> None:
        reply = _command(self.port, b"FLUSHALL SYNC\r\n", timeout=10)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL failed: {reply!r}")

    def kill(self) -> None:
        """SIGKILL, like a crash: no shutdown save, no goodbye to clients."""
        terminate(self.proc, sig=signal.SIGKILL)

    def stop(self) -> None:
        """Clean shutdown (SIGTERM; SIGKILL after a deadline)."""
        terminate(self.proc, timeout=10)

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)
