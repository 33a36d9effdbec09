"""A reader that stops early (``room-supervisor events ROOM | head``) ends the command quietly: exit 0, nothing on
stderr (no BrokenPipeError traceback, no "Exception ignored", no "cannot reach Redis").

The real CLI runs as a process whose stdout is a pipe: either read by a real ``head``, or with its read end
already closed (the reader went away before the first write, the hardest case: every write fails).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from consumer_support import client, write
from daemonproc import REPO, cli_env
from eventstore.records import DataReceived, SessionStarted
from supervisor.cli import main

pytestmark = pytest.mark.timeout(300)

BIG = "big room"  # enough output to fill a pipe (64 KiB) many times over
SMALL = "small room"  # output that fits in the pipe and in stdout's buffer: only the last flush fails


@pytest.fixture
def rooms(redis_url):
    async def go() -> None:
        redis = client(redis_url)
        try:
            now = time.time()
            big = [DataReceived(room=BIG, session="s", ts=now, participant_id="alice", data=b"x" * 60, topic="chat")
                   for _ in range(3000)]
            small = [SessionStarted(room=SMALL, session="s", ts=now, identity="rs-bot-1", pipeline="echo")]
            await write(redis, big + small)
            await redis.zadd("rs:rooms", {f"listed-{i:04d}": i for i in range(999)})  # `rooms` prints 1,000 lines
        finally:
            await redis.aclose()

    asyncio.run(go())
    for projection in ("participants", "call-state"):
        assert main(["consume", projection, "--until-caught-up", "--redis-url", redis_url]) == 0
    return cli_env({"REDIS_URL": redis_url})


def closed_reader(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run the CLI with stdout a pipe whose reader is already gone; (exit code, stderr)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "supervisor.cli", *args], cwd=REPO, env=env,
                              stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=60)
    finally:
        os.close(write_end)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("args", [
    ["events", BIG], ["events", BIG, "--json"], ["events", BIG, "--follow"], ["events", SMALL],
    ["events", SMALL, "--follow"], ["rooms"], ["rooms", "--json"], ["state", BIG, "--projection", "participants"],
    ["state", SMALL], ["state", BIG, "--check"], ["state", BIG, "--replay"], ["--help"], ["events", "--help"],
])
def test_a_reader_gone_before_the_first_line_ends_the_command_quietly(rooms, args):
    code, err = closed_reader(rooms, *args)
    assert (code, err) == (0, "")


@pytest.mark.parametrize("args", [["events", BIG], ["events", BIG, "--follow"], ["rooms"],
                                  ["state", BIG, "--replay"]])
def test_piped_into_head(rooms, args):
    cli = subprocess.Popen([sys.executable, "-m", "supervisor.cli", *args], cwd=REPO, env=rooms,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.run(["head", "-n", "2"], stdin=cli.stdout, capture_output=True, timeout=60)
    assert cli.stdout is not None
    cli.stdout.close()  # only head reads it now; once head exits the pipe has no reader
    try:
        err = cli.communicate(timeout=60)[1].decode()
    finally:
        if cli.poll() is None:
            cli.kill()
    assert len(head.stdout.decode().splitlines()) == 2
    assert (cli.returncode, err) == (0, "")
