"""docs/sdk.md runs as written: every code block, in order, against a real redis-server.

Python blocks run in one shared namespace (like a reader pasting them one after the other into a file);
``console`` blocks run each ``$ command`` line through bash from the repository root, with ``REDIS_URL`` set,
and must exit 0. Sync test: the blocks call ``asyncio.run`` themselves.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "sdk.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[str, str, int]]:
    """(language, code, line number) of every fenced block in the guide."""
    text = GUIDE.read_text(encoding="utf-8")
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 2) for m in FENCE.finditer(text)]


def test_the_guide_only_has_blocks_this_test_runs():
    found = blocks()
    assert len(found) >= 10
    assert {lang for lang, _, _ in found} == {"python", "console"}
    for lang, code, line in found:
        if lang == "console":
            assert all(row.startswith("$ ") for row in code.splitlines() if row.strip()), f"line {line}"


def _shell_env(redis_url: str) -> dict[str, str]:
    scripts = {sysconfig.get_path("scripts"), os.path.dirname(sys.executable)}
    env = {k: v for k, v in os.environ.items() if k not in ("ROOM_SUPERVISOR_CONFIG", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join([*scripts, env.get("PATH", "")])
    env["REDIS_URL"] = redis_url
    return env


def test_every_block_of_the_guide_runs(redis_url, monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.delenv("ROOM_SUPERVISOR_CONFIG", raising=False)
    namespace: dict[str, object] = {"__name__": "sdk_guide"}
    shell_out: list[str] = []
    for lang, code, line in blocks():
        if lang == "python":
            try:
                exec(compile(code, f"{GUIDE}:{line}", "exec"), namespace)  # noqa: S102 - the guide's own code
            except Exception as exc:
                pytest.fail(f"docs/sdk.md python block at line {line} failed: {exc!r}")
            continue
        for row in code.splitlines():
            if not row.startswith("$ "):
                continue
            done = subprocess.run(["bash", "-c", row[2:]], cwd=REPO, env=_shell_env(redis_url),
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"docs/sdk.md line {line}: {row}\n{done.stdout}\n{done.stderr}"
            shell_out.append(done.stdout)

    out = capsys.readouterr().out
    # what the guide says its code prints
    assert "WriterStats(appended=8, written=8" in out
    assert "caught up at seq 8" in out
    assert "rooms with news: ['support call 42']" in out
    assert "present now: [] left: ['alice']" in out
    assert "present at seq 3: ['alice']" in out
    assert "1 room(s) rebuilt; 'support call 42': call joined/waiting" in out
    assert "talk time at seq 8: {'alice': 3.0}" in out
    assert "'support call 42' is joined/waiting at seq 8" in out
    # ... and its shell commands
    events, *_ = shell_out
    assert [row.split()[0] for row in events.splitlines()] == ["7", "8"]
    assert any(row.startswith("eventstore.examples.third_projection:PROJECTION: same at seq 8") for row in shell_out)
    assert any('"chat":{"messages":1,"bytes":5' in row for row in shell_out)  # python3 -m eventstore.examples.third_projection
