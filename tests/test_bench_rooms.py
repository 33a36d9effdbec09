"""``bench/rooms.py --quick`` runs on real servers and its correctness checks hold: every room got a bot, the
bench's reader saw records and every data message, the baseline processes ran. No timing or capacity figure is
checked here; they are for people (bench/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.livekit, pytest.mark.timeout(300)]


def test_bench_rooms_quick_every_room_gets_a_bot_and_records_flow(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "rooms.py"), "--quick"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=280, check=False)
    assert done.stdout, done.stderr[-5000:]
    result = json.loads(done.stdout)
    assert done.returncode == 0 and result["pass"], (result["problems"], done.stderr[-5000:])
    assert result["bench"] == "rooms" and result["quick"] is True

    for pipeline in ("listen", "echo"):
        steps = [s for s in result["steps"] if s["pipeline"] == pipeline]
        assert [s["rooms"] for s in steps] == [2], pipeline
        step = steps[0]
        # every room had a connected bot before the window, and records and data messages flowed through it
        assert step["record_latency"]["count"] > 0 and step["caller_to_stream"]["count"] > 0, step
        assert step["records_per_s"] > 0 and step["data_sent_in_window"] > 0, step
        assert step["daemon"]["rss_mb"] > 0 and step["loop_lag"]["source"], step
        assert {"cpu", "cpu_main_thread"} <= step["daemon"].keys()
        assert {"cpu", "audio_realtime", "errors"} <= step["callers"].keys()
        assert step["callers"]["errors"] == 0, step["callers"]
        # every data message a caller sent reached its room's stream exactly once (a room whose bot left and came
        # back, which a loaded machine can cause, misses what was sent meanwhile: the bench leaves it out)
        check = result["data_check"][pipeline]
        assert check["sent"] > 0 and check["recorded"] > 0, check
        if check["rooms_with_more_than_one_bot_session"] == 0:
            assert check["sent"] == check["recorded"] and check["rooms_differing"] == 0, check

        assert "max_rooms_within_budget" in result["results"][pipeline]
        base = result["baseline"][pipeline]
        assert base["processes"] == base["running"] == base["connected"] == 2, base
        assert base["data_messages"] > 0 and base["rss_per_room_mb"] > 0, base
        assert {"cpu_per_room", "rss_per_room_mb", "pss_per_room_mb"} <= base.keys()
    assert result["notes"] and isinstance(result["problems"], list)
