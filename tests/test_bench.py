"""The benchmarks run at a small size and their correctness checks hold: every contender wrote every record
(append), and ours and the fair baseline reach the same states on every room (replay). No timing is checked
here; the figures are for people (bench/README.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def run_bench(tmp_path: Path, script: str, *args: str) -> tuple[dict, subprocess.CompletedProcess[str]]:
    done = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=280)
    assert done.stdout, done.stderr
    return json.loads(done.stdout), done


@pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="redis-benchmark (redis-tools) not installed")
def test_bench_append_checks_every_contender_wrote_every_record(tmp_path):
    result, done = run_bench(tmp_path, "append.py", "--events", "3000", "--rooms", "10", "--rounds", "1",
                             "--ceiling-requests", "20000")
    assert done.returncode == 0 and result["pass"], result["problems"]
    assert result["ours_last_round"]["written"] == 3000
    for contender in ("ours", "pipelined", "naive", "ceiling"):
        assert len(result["seconds"][contender]) == 1, contender
    assert result["ours_share_of_ceiling"] > 0 and result["ours_vs_pipelined"] > 0


def test_bench_replay_ours_and_the_fair_baseline_agree_on_every_room(tmp_path):
    result, done = run_bench(tmp_path, "replay.py", "--events", "6000", "--rooms", "60", "--rounds", "1", "--quick")
    assert (result["events"], result["rooms"]) == (6000, 60)
    assert result["states_agree"], result["disagreeing_rooms"]
    assert done.returncode == 0 and result["pass"], result["problems"]
