"""The processes ``bench/rooms.py`` drives: the callers (``rooms_callers.py``) and the process-per-call
baseline (``rooms_baseline.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from common import REPO_ROOT  # first: puts the repository on sys.path

warnings.filterwarnings("ignore", message="The HMAC key is")  # the dev stack's short key, on purpose

from rooms_measure import BENCH

from supervisor.devstack.daemon_process import clean_env
from supervisor.devstack.livekit_server import LiveKitServer
from supervisor.devstack.netns import NetNamespace
from supervisor.devstack.redis_server import RedisServer
from transport.tokens import BOT_PREFIX

# --- the callers -------------------------------------------------------------------------------------------


@dataclass
class Stack:
    redis: RedisServer
    livekit: LiveKitServer
    netns: NetNamespace | None
    workdir: Path



class Callers:
    """``bench/rooms_callers.py`` processes; rooms go to them round robin."""

    def __init__(self, url: str, processes: int, workdir: Path, sample_rate: int, frame_ms: int, nice: int) -> None:
        self.url, self.n, self.workdir, self.nice = url, processes, workdir, nice
        self.sample_rate, self.frame_ms = sample_rate, frame_ms
        self.procs: list[asyncio.subprocess.Process] = []
        self.where: dict[str, int] = {}
        self.joined: dict[str, float] = {}
        self.seen: dict[str, set[str]] = {}  # room -> identities of the other participants the caller sees
        self.errors: list[str] = []
        self.left: set[str] = set()
        self.started: set[str] = set()  # rooms told to start their data messages
        self._stats: list[asyncio.Queue] = []
        self._readers: list[asyncio.Task] = []
        self._next = 0

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def start(self) -> None:
        log = open(self.workdir / "callers.log", "ab")  # noqa: SIM115, ASYNC230 - the children own it
        for i in range(self.n):
            niced = ["nice", "-n", str(self.nice)] if self.nice and shutil.which("nice") else []
            proc = await asyncio.create_subprocess_exec(  # nice execs python: the pid is the caller's
                *niced, sys.executable, str(BENCH / "rooms_callers.py"), "--url", self.url,
                "--sample-rate", str(self.sample_rate), "--frame-ms", str(self.frame_ms), "--data-on-command",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, cwd=REPO_ROOT,
                env=clean_env(), start_new_session=True, limit=1 << 20)
            self.procs.append(proc)
            self._stats.append(asyncio.Queue())
            ready: asyncio.Future = asyncio.get_running_loop().create_future()
            self._readers.append(asyncio.get_running_loop().create_task(self._read(i, proc, ready)))
            await asyncio.wait_for(ready, 60)
        log.close()

    async def _read(self, i: int, proc: asyncio.subprocess.Process, ready: asyncio.Future) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            kind, room = ev.get("ev"), ev.get("room")
            if kind == "ready" and not ready.done():
                ready.set_result(True)
            elif kind == "joined":
                self.joined[room] = ev["seconds"]
            elif kind == "bot":
                self.seen.setdefault(room, set()).add(ev["identity"])
            elif kind == "bot_left":
                self.seen.get(room, set()).discard(ev["identity"])
            elif kind == "error":
                self.errors.append(f"caller in {room}: {ev.get('error')}")
            elif kind == "left":
                self.left.add(room)
            elif kind == "stats":
                self._stats[i].put_nowait(ev)
        if not ready.done():
            ready.set_exception(RuntimeError(f"caller process {proc.pid} exited: see callers.log"))

    def _send(self, i: int, cmd: dict) -> None:
        """Send ``cmd`` to caller process ``i``; one that is gone (the rtc SDK ends a process it panics in, e.g.
        when an overloaded loop answers a connect too late) is an error of the run, not a crash of the bench."""
        proc = self.procs[i]
        if proc.returncode is not None or proc.stdin is None or proc.stdin.is_closing():
            error = f"caller process {proc.pid} is gone (exit {proc.returncode}); see callers.log"
            if error not in self.errors:
                self.errors.append(error)
            return
        proc.stdin.write((json.dumps(cmd) + "\n").encode())

    def join(self, rooms: list[str]) -> None:
        for room in rooms:
            i = self.where[room] = self._next % self.n
            self._next += 1
            self._send(i, {"op": "join", "room": room})

    async def leave(self, rooms: list[str], timeout: float = 60) -> None:
        for room in rooms:
            self._send(self.where[room], {"op": "leave", "room": room})
        deadline = time.monotonic() + timeout
        while not set(rooms) <= self.left and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    def start_data(self, room: str) -> None:
        """The room's caller may send data messages: its bot can receive them."""
        if room not in self.started:
            self.started.add(room)
            self._send(self.where[room], {"op": "start_data", "room": room})

    def stop_data(self, rooms: list[str]) -> None:
        for room in rooms:
            self._send(self.where[room], {"op": "stop_data", "room": room})

    async def stats(self) -> list[dict]:
        alive = [i for i, p in enumerate(self.procs) if p.returncode is None]
        for i in alive:
            self._send(i, {"op": "stats"})
        return [await asyncio.wait_for(self._stats[i].get(), 30) for i in alive]

    def bot_in(self, room: str, prefix: str = BOT_PREFIX) -> bool:
        return room in self.joined and any(i.startswith(prefix) for i in self.seen.get(room, ()))

    async def aclose(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.returncode is None:
                with contextlib.suppress(Exception):
                    self._send(i, {"op": "quit"})
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


class BaselineProc:
    """One ``bench/rooms_baseline.py`` process and what it printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.connected = False
        self.data = 0
        self.latencies: list[float] = []
        self.task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, stack: Stack, room: str, pipeline: str) -> BaselineProc:
        with open(stack.workdir / "baseline.log", "ab") as log:  # noqa: ASYNC230 - a local log file, once per process
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(BENCH / "rooms_baseline.py"), "--url", stack.livekit.url, "--room", room,
                "--pipeline", pipeline, stdin=subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log,
                cwd=REPO_ROOT, env=clean_env(), start_new_session=True)
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("ev") == "connected":
                self.connected = True
            elif ev.get("ev") == "data":
                self.data += 1
                if ev.get("latency") is not None:
                    self.latencies.append(ev["latency"])

    @property
    def exited(self) -> bool:
        return self.proc.returncode is not None

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await asyncio.wait([self.task], timeout=5)
