"""``room-supervisor demo``: the whole system on an embedded local stack, with a simulated caller.

Starts redis-server and a LiveKit dev server (in a network namespace of its own when run as root), starts the
daemon as a real ``room-supervisor serve`` process, joins the ``demo`` room with the ``echo`` pipeline, and
runs a caller (a real rtc participant) that speaks a tone, hears the bot echo it, sends data, leaves, rejoins
and leaves. Then it prints the room's events, the rebuilt participant and call state, and the redis-cli
commands to look for yourself, and stops everything (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from eventstore.connection import connect
from eventstore.reader import RoomReader

from ..errors import CommandError
from .daemon_process import REPO, DaemonProcess
from .participant import Participant
from .report import print_report
from .stack import LocalStack

ROOM = "demo"


def say(text: str) -> None:
    print(text, flush=True)


class Cli:
    """The real ``room-supervisor`` commands, run as a person would, with the demo daemon's config."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon

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


async def _scenario(stack: LocalStack, cli: Cli, hold: bool) -> None:
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
            say("\nThe local stack stays up so you can run these commands. Press Ctrl-C to stop everything.")
            await asyncio.Event().wait()
    finally:
        await redis.aclose()


def _quiet_third_parties() -> None:
    # The dev stack's secret is LiveKit's short dev secret on purpose; rtc's Rust logs are noise here.
    warnings.filterwarnings("ignore", message="The HMAC key is .* bytes long")
    logging.getLogger("livekit").setLevel(logging.WARNING)
    logging.getLogger("eventstore").setLevel(logging.WARNING)


def run_demo(args: argparse.Namespace) -> int:
    _quiet_third_parties()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="room-supervisor-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(workdir)
    daemon: DaemonProcess | None = None
    interrupted = False
    try:
        stack.start(say)
        assert stack.redis and stack.livekit
        daemon = DaemonProcess(workdir, stack.redis.url, stack.livekit.url, daemon_id="demo-daemon",
                               env={"LIVEKIT_API_KEY": stack.api_key, "LIVEKIT_API_SECRET": stack.api_secret},
                               drain_timeout=10.0)
        daemon.start()
        say(f"==> room-supervisor serve --config {daemon.config} started (pid {daemon.pid}, log {daemon.log_path}, "
            f"metrics http://127.0.0.1:{daemon.http_port}/metrics)")
        hold = sys.stdin.isatty() and not args.no_hold
        asyncio.run(_scenario(stack, Cli(daemon), hold))
    except KeyboardInterrupt:
        interrupted = True
        say("\n==> interrupted; stopping everything")
    finally:
        if daemon is not None:
            code, took = daemon.stop(20.0)
            say(f"==> daemon stopped with SIGTERM: exit {code} after {took:.1f}s")
        stack.stop()
        say("==> local redis-server and livekit-server stopped")
        if args.keep or args.workdir:
            say(f"    files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 130 if interrupted else 0
