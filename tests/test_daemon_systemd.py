"""The systemd units: ``systemd-analyze verify`` is clean and ``security --offline`` rates them well.

Both run against a scratch root holding the units, a stand-in for the venv's entry point (verify checks that
ExecStart exists) and a copy of the host's own system units (for the targets they order against).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
NAMES = ("room-supervisor.service", "room-supervisor-consumer@participants.service")
MAX_EXPOSURE = 2.0

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "root"
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS.glob("*.service"):
        shutil.copy(unit, units)
    entry = root / "opt/room-supervisor/venv/bin/room-supervisor"
    entry.parent.mkdir(parents=True)
    entry.write_text("#!/bin/sh\n")
    entry.chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy("/bin/kill", root / "bin/kill")
    system = Path("/usr/lib/systemd/system")
    if system.is_dir():
        shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    return root


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("unit", NAMES)
def test_units_verify_clean(root, unit):
    out = analyze("verify", f"--root={root}", unit)
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out


@pytest.mark.parametrize("unit", NAMES)
def test_units_exposure(root, unit):
    out = analyze("security", "--offline=true", f"--root={root}", unit)
    assert out.returncode == 0, out
    figure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert figure, out.stdout[-500:]
    print(figure.group(0))
    assert float(figure.group(1)) <= MAX_EXPOSURE


def test_stop_timeout_is_above_the_drain_bound():
    from supervisor.settings import DaemonSettings

    unit = (UNITS / "room-supervisor.service").read_text()
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))
    assert stop > DaemonSettings().drain_timeout + 5
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30", "StateDirectory=room-supervisor room-supervisor/spool"):
        assert line in unit.splitlines()
