"""Each Python block of docs/sdk.md is a whole program: it runs alone, in a fresh interpreter, and exits 0.

Every block runs against an emptied redis-server, after the guide's appending example (the block that uses
``EventWriter``) has recorded the call the others read; that block itself runs on the empty server. The
interpreter starts in an empty directory with only ``REDIS_URL`` pointing at the test server: nothing the
guide does not show is there. (``tests/test_sdk_example.py`` runs all blocks in order, in one namespace.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "sdk.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
TIMEOUT_S = 60

# What a block prints when it runs alone after the call is recorded (the key is a name only that block has).
PRINTS = {
    "async def ping": [],
    "async def record_a_call": ["WriterStats(appended=8, written=8"],
    "async def read_room": ["[5, 6, 7, 8] last seq: 8"],
    "async def follow_room": ["caught up at seq 8"],
    "async def watch_everything": ["support call 42 6 DataReceived", "support call 42 8 ParticipantLeft",
                                   "resume from {'support call 42': 8}"],
    "async def consume": ["'support call 42' is joined/waiting at seq 8"],
    "async def notifications": ["rooms with news: ['support call 42']"],
    "async def rebuild": ["present at seq 3: ['alice']", "1 room(s) rebuilt; 'support call 42': call joined/waiting"],
    "async def talk_time": ["talk time at seq 8: {'alice': 3.0}"],
}


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of every ```python block of the guide."""
    text = GUIDE.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == "python"]


def _key(code: str) -> str:
    found = [key for key in PRINTS if key in code]
    assert len(found) == 1, f"a block should contain exactly one of {list(PRINTS)}, found {found}"
    return found[0]


def _recorder() -> str:
    writers = [code for _, code in BLOCKS if "EventWriter(" in code]
    assert len(writers) == 1, "the guide should have exactly one appending example"
    return writers[0]


def run_alone(code: str, redis_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ROOM_SUPERVISOR_CONFIG", "PYTHONPATH", "REDIS_URL")}
    env["REDIS_URL"] = redis_url
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)


BLOCKS = python_blocks()


def test_every_block_is_known_here():
    keys = [_key(code) for _, code in BLOCKS]
    assert sorted(keys) == sorted(PRINTS), "a block was added to or removed from the guide: update PRINTS"


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_a_block_runs_alone(line, code, redis_url, tmp_path):
    recorder = _recorder()
    if code is not recorder:
        setup = run_alone(recorder, redis_url, tmp_path)
        assert setup.returncode == 0, f"the appending example failed:\n{setup.stderr}"
    try:
        done = run_alone(code, redis_url, tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"docs/sdk.md python block at line {line} was still running after {TIMEOUT_S} s")
    assert done.returncode == 0, f"docs/sdk.md python block at line {line} exited {done.returncode}:\n{done.stderr}"
    for text in PRINTS[_key(code)]:
        assert text in done.stdout, f"docs/sdk.md line {line}: {text!r} not printed:\n{done.stdout}"
