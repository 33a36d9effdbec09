"""Run the real daemon (``python -m supervisor.cli serve``) and the real CLI as subprocesses, and look at what
they did: Redis streams, heartbeats, sd_notify messages, LiveKit's participant lists.

The usual shape of a daemon test::

    daemon = DaemonProcess(tmp_path, redis_url, livekit_server.url)
    async with observing(daemon) as observer:   # stops the daemon after; prints its log if the test failed
        await start_in_rooms(daemon, observer, rooms)
        ...
        await daemon.sigterm_exits(0)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

from harness.livekit_server import API_KEY, API_SECRET
from harness.util import async_wait_until
from livekit import api as lkapi

from eventstore.connection import connect
from eventstore.keys import Keys
from eventstore.reader import RoomReader
from eventstore.records import Record, tag_of
from supervisor.devstack import daemon_process
from supervisor.heartbeat import read_heartbeats
from transport.tokens import BOT_PREFIX

REPO = daemon_process.REPO
# A forced exit (second SIGTERM) takes about half a second; this is generous for a loaded machine, and still
# below the 5 s and more the earlier forced path took.
FORCED_EXIT_DEADLINE = 4.0


# The test pipelines, by name, as an operator registers theirs ([pipelines] in the config file). Daemon tests
# join with these names (`--pipeline slow_leave`); transport tests pass them in SessionSpec.pipelines.
TEST_PIPELINES: dict[str, str] = {
    "handlers": "tests.pipelines:handlers",
    "echo_handlers": "tests.pipelines:echo_handlers",
    "hostile_handlers": "tests.pipelines:hostile_handlers",
    "raising": "tests.pipelines:raising",
    "broken_factory": "tests.pipelines:broken_factory",
    "listen_probe": "tests.pipelines:listen_probe",
    "echo_probe": "tests.pipelines:echo_probe",
    "slow_leave": "tests.daemon_pipelines:slow_leave",
}


# The settings of a test daemon: short leases and quick retries, so that tests take seconds.
# load_threshold 1.0: admission by load off, so that how busy the test machine is never decides which daemon
# takes a room (tests/test_load.py sets thresholds of its own)
TEST_DAEMON: dict[str, Any] = {"lease_ttl": 3.0, "drain_timeout": 20.0, "reconcile_interval": 0.5,
                               "rejoin_base": 0.2, "rejoin_max": 2.0, "load_threshold": 1.0}


def write_config(path: Path, redis_url: str, livekit_url: str, *, spool_dir: Path, daemon_id: str,
                 http_port: int = 0, pipelines: dict[str, str] | None = None, **daemon: Any) -> Path:
    """A test daemon's config file (:func:`supervisor.devstack.daemon_process.write_config` with
    :data:`TEST_DAEMON` settings and :data:`TEST_PIPELINES`)."""
    return daemon_process.write_config(
        path, redis_url, livekit_url, spool_dir=spool_dir,
        daemon={"id": daemon_id, "http_port": http_port, **TEST_DAEMON, **daemon},
        pipelines=TEST_PIPELINES if pipelines is None else pipelines)


cli_env = daemon_process.clean_env


def run_cli(*args: str, config: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "supervisor.cli", *args]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run(argv, cwd=REPO, env=env or cli_env(), capture_output=True, text=True, timeout=timeout)


def run_cli_many(commands: Iterable[list[str]], config: Path, parallel: int = 4) -> None:
    """Run CLI commands a few at a time (each is a Python start-up); every one must exit 0."""
    pending = list(commands)
    while pending:
        batch, pending = pending[:parallel], pending[parallel:]
        procs = [subprocess.Popen([sys.executable, "-m", "supervisor.cli", *c, "--config", str(config)], cwd=REPO,
                                  env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in batch]
        for command, proc in zip(batch, procs):
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{out}\n{err}"


class DaemonProcess(daemon_process.DaemonProcess):
    """The dev stack's daemon process with a test's settings (:data:`TEST_DAEMON`, :data:`TEST_PIPELINES`)."""

    def __init__(self, workdir: Path, redis_url: str, livekit_url: str, *, daemon_id: str | None = None,
                 env: dict[str, str] | None = None, pipelines: dict[str, str] | None = None, **daemon: Any) -> None:
        super().__init__(workdir, redis_url, livekit_url, daemon_id=daemon_id or f"test-{uuid.uuid4().hex[:8]}",
                         env=env, pipelines=TEST_PIPELINES if pipelines is None else pipelines,
                         **{**TEST_DAEMON, **daemon})

    async def sigterm_exits(self, code: int = 0, timeout: float = 60) -> None:
        """SIGTERM; the daemon must exit with ``code`` within ``timeout`` seconds."""
        self.signal(signal.SIGTERM)
        assert await self.wait_exit(timeout) == code, self.log_tail()

    async def full_reads(self) -> float:
        """``room_supervisor_desired_full_reads_total`` from the daemon's /metrics (0 when it does not answer)."""
        return await self.metric("room_supervisor_desired_full_reads_total")


async def start_in_rooms(daemon: DaemonProcess, observer: Observer, rooms: list[str], *, pipeline: str = "",
                         joins: Iterable[list[str]] = (), timeout: float = 180) -> None:
    """Join ``rooms`` (with ``pipeline``, if given) and run the extra ``joins`` commands through the CLI, start
    the daemon, and wait until every one of ``rooms`` has a ``connected`` record."""
    join = ["--pipeline", pipeline] if pipeline else []
    run_cli_many([*(["join", room, *join] for room in rooms), *joins], daemon.config)
    daemon.start()
    await observer.wait_connected(rooms, timeout=timeout)


@contextlib.asynccontextmanager
async def observing(*daemons: DaemonProcess, notify: NotifyListener | None = None,
                    log_lines: int = 100) -> AsyncIterator[Observer]:
    """An :class:`Observer` of the first daemon's Redis and LiveKit for the block. If the block fails, every
    daemon's log tail is printed; in any case every daemon is stopped and ``notify`` closed."""
    observer = Observer(daemons[0].redis_url, daemons[0].livekit_url)
    try:
        yield observer
    except BaseException:
        for daemon in daemons:
            print(f"----- daemon {daemon.id}\n{daemon.log_tail(log_lines)}")
        raise
    finally:
        for daemon in daemons:
            daemon.stop()
        if notify is not None:
            notify.close()
        await observer.aclose()


class NotifyListener:
    """A socket standing in for systemd's ``$NOTIFY_SOCKET`` (abstract, so no path length limit). Like systemd,
    it reads every datagram as it arrives (a unix datagram queue holds only a few)."""

    def __init__(self) -> None:
        self.name = f"@rs-test-notify-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.setblocking(False)
        self.messages: list[str] = []
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return

    def lines(self) -> list[str]:
        self._read()
        return [line for message in self.messages for line in message.split("\n")]

    async def wait_for(self, line: str, timeout: float) -> None:
        await async_wait_until(lambda: line in self.lines(), timeout, f"sd_notify {line}", 0.1)

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


class Observer:
    """Reads what the daemons did: room streams, heartbeats, and LiveKit's participant lists."""

    def __init__(self, redis_url: str, livekit_url: str) -> None:
        self.redis = connect(redis_url)  # retries once on a new connection: the tests restart Redis
        self.keys = Keys()
        self.reader = RoomReader(self.redis, self.keys)
        self.livekit = lkapi.LiveKitAPI(livekit_url, API_KEY, API_SECRET, failover=False)

    async def records(self, room: str) -> list[Record]:
        return await self.reader.read(room)

    async def types(self, room: str) -> list[str]:
        return [tag_of(r) for r in await self.records(room)]

    async def held_rooms(self) -> dict[str, dict[str, Any]]:
        """room -> session view (with the daemon id) from every live heartbeat."""
        out: dict[str, dict[str, Any]] = {}
        for beat in await read_heartbeats(self.redis, self.keys):
            for room, view in beat.rooms.items():
                out[room] = {**view, "daemon": beat.id}
        return out

    async def ready(self, daemon_id: str) -> bool:
        """The daemon's heartbeat says it is ready (its signal handlers are installed by then)."""
        return any(b.id == daemon_id and b.state == "ready" for b in await read_heartbeats(self.redis, self.keys))

    async def bots(self, room: str) -> list[str]:
        """Identities of our bots that LiveKit lists in ``room``."""
        try:
            reply = await self.livekit.room.list_participants(lkapi.ListParticipantsRequest(room=room))
        except lkapi.TwirpError as exc:
            if exc.code == "not_found":
                return []
            raise
        return sorted(p.identity for p in reply.participants if p.identity.startswith(BOT_PREFIX))

    async def bots_by_room(self, rooms: Iterable[str]) -> dict[str, list[str]]:
        rooms = list(rooms)
        found = await asyncio.gather(*(self.bots(r) for r in rooms))
        return dict(zip(rooms, found))

    async def wait_connected(self, rooms: Iterable[str], timeout: float, *, after: dict[str, int] | None = None) -> None:
        """Every room has a ``connected`` record (after sequence ``after[room]``, if given)."""
        rooms = list(rooms)
        after = after or {}

        async def all_connected() -> bool:
            for room in rooms:
                if not any(tag_of(r) == "connected" and r.seq > after.get(room, 0) for r in await self.records(room)):
                    return False
            return True

        await async_wait_until(all_connected, timeout, f"{len(rooms)} rooms connected", 0.5)

    async def aclose(self) -> None:
        await self.livekit.aclose()
        await self.redis.aclose()


class BotWatch:
    """Polls LiveKit's participant list of every room every ``period`` seconds until stopped; remembers each
    room's bot identities, every poll that showed two or more bots in a room (``duplicates``) and every poll
    that showed none (``gaps``)."""

    def __init__(self, observer: Observer, rooms: list[str], period: float = 0.2) -> None:
        self.observer, self.rooms, self.period = observer, rooms, period
        self.seen: dict[str, set[str]] = {room: set() for room in rooms}
        self.duplicates: list[dict[str, list[str]]] = []
        self.gaps: list[list[str]] = []
        self.polls = 0
        self._stop = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            bots = await self.observer.bots_by_room(self.rooms)
            self.polls += 1
            for room, identities in bots.items():
                self.seen[room].update(identities)
            if twice := {room: b for room, b in bots.items() if len(b) > 1}:
                self.duplicates.append(twice)
            if empty := [room for room, b in bots.items() if not b]:
                self.gaps.append(empty)
            try:
                await asyncio.wait_for(self._stop.wait(), self.period)
            except asyncio.TimeoutError:
                pass

    async def stop(self) -> None:
        self._stop.set()
        await self.task

    async def __aenter__(self) -> BotWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.task.done():
            await self.stop()
