"""Helpers shared by the benchmarks: a private redis-server, timing figures, JSON output.

Importing this module also puts the repository root first on ``sys.path`` (after ``bench/``), so the scripts
measure this checkout's ``eventstore`` from any working directory, whatever copy may be installed.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Self

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(1, str(REPO_ROOT))

LOOPBACK = "127.0.0.1"  # the benchmarks talk to nothing else
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private ``redis-server``: a free loopback port, a temporary directory, no persistence.

    Use as a context manager: ``start`` waits (polling PING until a deadline) until it answers; leaving the block
    stops it (SIGTERM, SIGKILL after a deadline) and removes the directory.
    """

    def __init__(self, prefix: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def _argv(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH (Redis >= 7.0, e.g. apt-get install redis-server)")
        return [binary, "--port", str(self.port), "--bind", LOOPBACK, "--protected-mode", "yes",
                "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"), "--daemonize", "no",
                "--save", "", "--appendonly", "no"]

    def start(self) -> Self:
        self.proc = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT
        while not _ping(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer within {READY_TIMEOUT}s: {self.log_tail()}")
            time.sleep(0.02)  # poll interval, bounded by the deadline above
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.dir / "redis.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no redis.log)"

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cyclic garbage collector off inside the block (as ``eventstore.consumer.replay_many`` does)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def per_second(count: int, seconds: float) -> int:
    return round(count / seconds) if seconds > 0 else 0


def best_and_median(count: int, seconds: list[float]) -> tuple[int, int]:
    """Throughput of the best (fastest) round and of the median round."""
    return per_second(count, min(seconds)), per_second(count, statistics.median(seconds))


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def rounded(seconds: list[float]) -> list[float]:
    return [round(s, 3) for s in seconds]


def environment() -> dict[str, Any]:
    """What the figures depend on besides the code; a high load average means other work shared the CPUs."""
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": _cpus(),
            "load_average_1m": round(os.getloadavg()[0], 2)}


def _cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def emit(result: dict[str, Any]) -> None:
    """The one JSON object a benchmark prints on stdout."""
    print(json.dumps(result, indent=2))
