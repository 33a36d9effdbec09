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
