"""Step 6: the demo command runs non-interactively and prints what a newcomer should see; held (``--hold``) it
keeps the stack up without a terminal for a developer's loop in another shell, until SIGTERM."""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from daemonproc import cli_env, run_cli
from harness.util import wait_until

pytestmark = [pytest.mark.livekit, pytest.mark.slow, pytest.mark.timeout(240)]


def test_demo_runs_end_to_end_and_prints_the_story():
    proc = subprocess.run([sys.executable, "-m", "supervisor.cli", "demo", "--no-hold"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=200, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "the caller hears the bot echo the tone" in out
    # each section was produced by the command it names: the real CLI, run by the demo
    for command in ("join demo --pipeline echo", "leave demo", "events demo", "consume participants --until-caught-up",
                    "consume call-state --until-caught-up", "state demo --check"):
        assert f"$ room-supervisor {command}\n" in out, command
    assert "participants: same at seq" in out and "call-state: same at seq" in out
    # the event stream, in the order the scenario made it
    kinds = re.findall(r"^\s+\d+\s+\S+\s+(\w+)", out, flags=re.M)
    assert kinds[0] == "session_started"
    for expected in ("connected", "participant_connected", "first_participant_joined", "audio_track_subscribed",
                     "data_received", "participant_disconnected", "participant_left", "before_disconnect",
                     "disconnected", "session_ended"):
        assert expected in kinds, expected
    assert kinds.count("participant_connected") == 2 and kinds.count("participant_left") == 2
    assert "data='hello bot'" in out and "<5 bytes 000102feff>" in out
    # rebuilt state: the caller left twice with the real reason, one rejoin, four messages
    assert re.search(r"left\s+caller\s+at .*\(CLIENT_INITIATED\), 1 rejoin\(s\), 4 message\(s\)", out)
    assert "now: state=left phase=ended" in out
    # real redis-cli output of the room's stream and the commands to look again
    assert re.search(r"^\d+-\d+\ntype\nsession_started\nseq\n1\nrec\n\{\"type\":\"session_started\",\"seq\":1,",
                     out, flags=re.M)
    assert "XRANGE 'rs:room:{demo}:events' - +" in out
    assert re.search(r"daemon stopped with SIGTERM: exit 0", out)
    assert "local redis-server and livekit-server stopped" in out
    # not held: no commands for a stack that is gone, and the log it printed is said to be removed with its dir
    assert "look for yourself" not in out and "export REDIS_URL" not in out and "HGETALL" not in out
    assert "`room-supervisor demo --hold` keeps the stack up" in out
    [workdir] = re.findall(r"^    removed (\S+), the daemon's log with it \(--keep or --workdir DIR keeps them\)$",
                           out, flags=re.M)
    assert f"log {workdir}/demo-daemon.log" in out and not Path(workdir).exists()


def test_demo_reports_a_missing_prerequisite_clearly(tmp_path):
    env = {**os.environ, "PATH": "/nonexistent", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "supervisor.cli", "demo", "--no-hold", "--workdir",
                           str(tmp_path / "demo")], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 4
    assert "redis-server is not installed" in proc.stderr and "apt-get install -y redis-server" in proc.stderr


def test_demo_from_an_installed_wheel_says_to_use_a_checkout():
    """The wheel has no dev stack (tests/test_layout.py); the demo then says where it runs instead of failing."""
    code = ("import sys; sys.modules['supervisor.devstack'] = None\n"
            "from supervisor.cli import main\nsys.exit(main(['demo', '--no-hold']))")
    proc = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 4, proc.stderr
    assert "source checkout" in proc.stderr and "make demo" in proc.stderr


class Lines:
    """The lines a process prints, read by a thread as they come; ``until`` waits for one with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, predicate, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise TimeoutError(f"no {what} within {timeout:.0f}s; printed:\n" + "\n".join(self.seen[-40:])) from None
            if line is None:
                raise AssertionError(f"output ended before {what}:\n" + "\n".join(self.seen[-40:]))
            self.seen.append(line)
            if predicate(line):
                return line

    def rest(self, timeout: float) -> str:
        self._thread.join(timeout)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.seen.append(line)
        return "\n".join(self.seen)


@pytest.mark.timeout(400)
def test_demo_hold_without_a_terminal_serves_a_developers_loop_then_stops_on_sigterm(tmp_path):
    err = (tmp_path / "demo.err").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "demo", "--hold", "--workdir",
                             str(tmp_path / "demo")], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                            text=True, env={**os.environ, "PYTHONWARNINGS": "ignore", **YOUR_PIPELINE})
    lines = Lines(proc)
    try:
        line = lines.until(lambda text: text.startswith("export "), 240, "export line")
        exported = dict(word.split("=", 1) for word in shlex.split(line)[1:])
        assert sorted(exported) == ["LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "LIVEKIT_URL", "REDIS_URL"]
        assert (exported["LIVEKIT_API_KEY"], exported["LIVEKIT_API_SECRET"]) == ("devkey", "secret")
        lines.until(lambda text: text == "Ctrl-C (or SIGTERM) stops everything.", 30, "the end of the hold text")
        assert proc.poll() is None  # no terminal, and still up
        _developers_loop(cli_env(exported))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:  # stop it the way it stops its servers; kill only as the last resort
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
        err.close()
    out = lines.rest(30)
    assert proc.stdout is not None
    proc.stdout.close()
    for said in ("==> SIGTERM: stopping everything", "==> consumers stopped", "==> daemon stopped with SIGTERM: exit 0",
                 "==> local redis-server and livekit-server stopped"):
        assert said in out, out[-3000:]
    port = int(exported["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # the stack is gone


YOUR_PIPELINE = {"RS_PIPELINES_MYBOT": "tests.pipelines:handlers"}


def _developers_loop(env: dict[str, str]) -> None:
    """What the README's loop does in a second terminal, against the held stack."""
    listed = run_cli("rooms", env=env)
    assert listed.returncode == 0, listed.stderr
    [demo] = [line for line in listed.stdout.splitlines() if line.startswith("'demo'")]
    assert demo.split()[1] == "ended" and demo.split()[-1] == "left"  # the demo's call ended with `leave`
    assert run_cli("join", "myroom", "--pipeline", "echo", env=env).returncode == 0
    said = run_cli("call", "myroom", "--say", "hi", "--data", "--wait", "60", env=env, timeout=120)
    assert said.returncode == 0, said.stderr
    assert "rs-bot-" in said.stdout.splitlines()[0] + said.stdout.splitlines()[1], said.stdout
    assert "sent 'hi' as a data packet: 2 bytes, topic 'lk.chat', reliable" in said.stdout

    def recorded() -> bool:
        events = run_cli("events", "myroom", env=env)
        return events.returncode == 0 and "data_received" in events.stdout and "data='hi'" in events.stdout

    wait_until(recorded, 60, "the bot to record the caller's data", interval=0.5)

    def materialized() -> bool:  # the demo's consumers keep the state up to date
        state = run_cli("state", "myroom", "--check", env=env)
        return state.returncode == 0 and "participants: same at seq" in state.stdout

    wait_until(materialized, 60, "the demo's consumers to catch up", interval=0.5)

    # your own pipeline: the demo's daemon took RS_PIPELINES_<NAME> (and PYTHONPATH) from the demo's environment
    mine = {**env, **YOUR_PIPELINE}
    assert run_cli("join", "mine", "--pipeline", "mybot", env=mine).returncode == 0

    def joined() -> bool:
        events = run_cli("events", "mine", env=mine).stdout
        return "pipeline='mybot'" in events and re.search(r"^\s+\d+\s+\S+\s+connected ", events, re.M) is not None

    wait_until(joined, 60, "the demo's daemon to join with your pipeline", interval=0.5)
