"""Step 6: the demo command runs non-interactively and prints what a newcomer should see."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.livekit, pytest.mark.slow, pytest.mark.timeout(240)]


def test_demo_runs_end_to_end_and_prints_the_story(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "supervisor.cli", "demo", "--no-hold", "--workdir",
                           str(tmp_path / "demo")], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=200, env={**os.environ, "PYTHONWARNINGS": "ignore"})
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
