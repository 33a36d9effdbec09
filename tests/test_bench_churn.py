"""The session-churn benchmark runs at its quick size and its correctness holds: in every round every room's
session started, connected and ended (one of each, one session id), the daemon held no room after each round
and exited 0 on SIGTERM. The RSS figures are for people (bench/churn.py); nothing here checks them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.livekit, pytest.mark.timeout(400)]


def test_bench_churn_quick_starts_and_ends_every_session(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "churn.py"), "--quick"], check=False, cwd=tmp_path,
                          capture_output=True, text=True, timeout=380)
    assert done.stdout, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert done.returncode == 0 and result["correct"], (result["problems"], done.stderr[-3000:])
    rooms, rounds = result["rooms"], result["rounds"]
    assert (rooms, rounds) == (4, 3)
    sessions = rooms * rounds
    assert result["sessions_started"] == result["sessions_connected"] == result["sessions"] == sessions
    assert result["end_reasons"] == {"left": sessions}
    assert result["daemon_exit"] == 0
    # round 0 (the daemon ready, before any join) and one point per round, each after all its sessions ended
    assert [(p["round"], p["sessions"]) for p in result["curve"]] == [(n, n * rooms) for n in range(rounds + 1)]
    assert all(p["rss_kb"] > 0 for p in result["curve"])
    # the callers' data packet and text stream reached every session's records
    assert result["data_recorded"] == result["text_recorded"] == sessions
    assert "growth_pct" in result and "pass" in result  # reported, not judged here
