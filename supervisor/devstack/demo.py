"""``room-supervisor demo``: the whole system on an embedded local stack, with a simulated caller.

Starts redis-server and a LiveKit dev server (in a network namespace of its own when run as root), starts the
daemon as a real ``room-supervisor serve`` process, joins the ``demo`` room with the ``echo`` pipeline, and
runs a caller (a real rtc participant) that speaks a tone, hears the bot echo it, sends data, leaves, rejoins
and leaves. Then it prints the room's events and the rebuilt participant and call state.

Then it stops everything, or, held (``--hold``, the default on a terminal), keeps the stack, the daemon and a
consumer of each projection running until SIGINT or SIGTERM, and prints the ``export`` line and the commands to
use them from another shell. SIGINT and SIGTERM stop everything at any point; once stopping, further ones are
ignored (stopping is bounded), so nothing it started is left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

from eventstore.connection import connect
from eventstore.reader import RoomReader

from ..errors import CommandError
from .daemon_process import REPO, DaemonProcess
from .participant import Participant
from .report import print_held, print_report
from .stack import LocalStack
from .util import terminate

ROOM = "demo"
CONSUMED = ("participants", "call-state")


def say(text: str) -> None:
    """Print a line now. A reader that went away (``| head``) does not stop the demo half-way, with servers
    left running: the rest goes to /dev/null."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)


class Signals:
    """SIGINT and SIGTERM: while the stack is held they end the hold; before, they interrupt the demo
    (``KeyboardInterrupt``); once it is stopping they are ignored, so that stopping finishes."""

    def __init__(self) -> None:
        self.release: Callable[[], None] | None = None
        self.stopping = False
        self.received = 0
        self._before: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._before[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signum
        if self.stopping:
            return
        if self.release is not None:
            self.release()
            return
        self.stopping = True
        raise KeyboardInterrupt


class Cli:
    """The real ``room-supervisor`` commands, run as a person would, with the demo daemon's config."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.consumers: list[subprocess.Popen[bytes]] = []

    def start_consumers(self) -> None:
        """``room-supervisor consume NAME`` for each projection, running until :meth:`stop_consumers`."""
        log = open(self.daemon.dir / "consumers.log", "ab")  # noqa: SIM115 - the children own it
        for name in CONSUMED:
            self.consumers.append(subprocess.Popen(
                [sys.executable, "-m", "supervisor.cli", "consume", name, "--config", str(self.daemon.config)],
                cwd=REPO, env=self.daemon.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True))
        log.close()

    def stop_consumers(self) -> None:
        for proc in self.consumers:
            terminate(proc, timeout=10)
        self.consumers.clear()

    async def run(self, *args: str, ok: tuple[int, ...] = (0,)) -> str:
        say(f"$ room-supervisor {' '.join(args)}")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "supervisor.cli", *args, "--config", str(self.daemon.config), cwd=REPO,
            env=self.daemon.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate()
        if proc.returncode not in ok:
            raise CommandError(f"demo: `room-supervisor {' '.join(args)}` exited {proc.returncode}: "
                               f"{err.decode(errors='replace')[-2000:]}")
        return out.decode(errors="replace").rstrip("\n")


async def _wait_for(reader: RoomReader, room: str, predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = await reader.read(room)
        found = predicate(records)
        if found:
            return found
        await asyncio.sleep(0.2)
    raise CommandError(f"demo: timed out after {timeout:.0f}s waiting for {what}")


def _tags(records):
    return [type(r).__struct_config__.tag for r in records]


async def _hold(stack: LocalStack, cli: Cli, signals: Signals) -> None:
    """Keep everything up, with consumers running, until SIGINT or SIGTERM."""
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals.release = lambda: loop.call_soon_threadsafe(stopped.set)
    cli.start_consumers()
    print_held(stack, cli.daemon, CONSUMED, say)
    await stopped.wait()
    signals.stopping, signals.release = True, None  # the loop closes soon; later signals are ignored
    say(f"\n==> {signal.Signals(signals.received).name}: stopping everything")


async def _scenario(stack: LocalStack, cli: Cli, hold: bool, signals: Signals) -> None:
    assert stack.redis and stack.livekit
    redis = connect(stack.redis.url)
    reader = RoomReader(redis)
    try:
        say(await cli.run("join", ROOM, "--pipeline", "echo"))
        say("==> waiting for the bot to connect")
        await _wait_for(reader, ROOM, lambda rs: "connected" in _tags(rs), 60, "the bot to join the demo room")
        caller = Participant(stack.livekit.url, ROOM, "caller")
        await caller.join()
        say("==> caller joined; speaking a 440 Hz tone")
        await caller.publish_tone(440.0)
        bot = await _wait_for(reader, ROOM, lambda rs: next((r.identity for r in rs if _tags([r]) == ["connected"]),
                                                            None), 10, "the bot identity")
        frames = await caller.wait_for_audio(bot, frames=50, timeout=30)
        say(f"    the caller hears the bot echo the tone ({frames} loud audio frames)")
        for text in ("hello bot", '{"intent": "book", "when": "tomorrow"}'):
            await caller.send_text(text, topic="chat")
        await caller.send_bytes(bytes([0, 1, 2, 254, 255]), topic="binary")
        say("==> caller sent 3 data messages (text, JSON, binary); now leaves, rejoins and leaves")
        await _wait_for(reader, ROOM, lambda rs: _tags(rs).count("data_received") >= 3, 20, "the data messages")
        await caller.leave()
        await _wait_for(reader, ROOM, lambda rs: "participant_left" in _tags(rs), 30, "the caller to leave")
        await caller.join()
        await _wait_for(reader, ROOM, lambda rs: _tags(rs).count("participant_connected") >= 2, 30, "the rejoin")
        await caller.send_text("back again", topic="chat")
        await _wait_for(reader, ROOM, lambda rs: _tags(rs).count("data_received") >= 4, 20, "the last message")
        await caller.leave()
        await _wait_for(reader, ROOM, lambda rs: _tags(rs).count("participant_left") >= 2, 30, "the second leave")
        say(await cli.run("leave", ROOM))
        say("==> waiting for the bot to leave")
        await _wait_for(reader, ROOM, lambda rs: "session_ended" in _tags(rs), 30, "the session to end")
        await print_report(redis, ROOM, stack.redis.port, cli.run, say)
        if hold:
            await _hold(stack, cli, signals)
        else:
            say("\n==> done; stopping everything (`room-supervisor demo --hold` keeps the stack up to look around, "
                "and prints how to use it from another shell)")
    finally:
        await redis.aclose()


def _quiet_third_parties() -> None:
    # The dev stack's secret is LiveKit's short dev secret on purpose; rtc's Rust logs are noise here.
    warnings.filterwarnings("ignore", message="The HMAC key is .* bytes long")
    logging.getLogger("livekit").setLevel(logging.WARNING)
    logging.getLogger("eventstore").setLevel(logging.WARNING)


def your_pipelines(environ: Mapping[str, str]) -> dict[str, str]:
    """What the demo's daemon takes from the demo's environment so that it can run your pipelines too:
    ``RS_PIPELINES_<NAME>`` and ``PYTHONPATH`` (after the checkout's own)."""
    env = {name: value for name, value in environ.items() if name.startswith("RS_PIPELINES_")}
    if environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), environ["PYTHONPATH"]])
    return env


def run_demo(args: argparse.Namespace) -> int:
    _quiet_third_parties()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="room-supervisor-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(workdir)
    daemon: DaemonProcess | None = None
    cli: Cli | None = None
    signals = Signals()
    signals.install()
    try:
        stack.start(say)
        assert stack.redis and stack.livekit
        daemon = DaemonProcess(workdir, stack.redis.url, stack.livekit.url, daemon_id="demo-daemon",
                               env={"LIVEKIT_API_KEY": stack.api_key, "LIVEKIT_API_SECRET": stack.api_secret,
                                    **your_pipelines(os.environ)},
                               drain_timeout=10.0)
        daemon.start()
        say(f"==> room-supervisor serve --config {daemon.config} started (pid {daemon.pid}, log {daemon.log_path}, "
            f"metrics http://127.0.0.1:{daemon.http_port}/metrics)")
        hold = args.hold or (sys.stdin.isatty() and not args.no_hold)
        cli = Cli(daemon)
        asyncio.run(_scenario(stack, cli, hold, signals))
    except KeyboardInterrupt:
        say(f"\n==> {signal.Signals(signals.received or signal.SIGINT).name}: interrupted; stopping everything")
        return 128 + (signals.received or signal.SIGINT)
    finally:
        signals.stopping = True
        _stop(stack, daemon, cli, workdir, keep=bool(args.keep or args.workdir))
        signals.restore()
    return 0


def _stop(stack: LocalStack, daemon: DaemonProcess | None, cli: Cli | None, workdir: Path, *, keep: bool) -> None:
    if cli is not None and cli.consumers:
        cli.stop_consumers()
        say("==> consumers stopped")
    if daemon is not None:
        code, took = daemon.stop(20.0)
        say(f"==> daemon stopped with SIGTERM: exit {code} after {took:.1f}s")
    stack.stop()
    say("==> local redis-server and livekit-server stopped")
    if keep:
        say(f"    files kept in {workdir} (the daemon's log: {daemon.log_path if daemon else '-'})")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        say(f"    removed {workdir}, the daemon's log with it (--keep or --workdir DIR keeps them)")
