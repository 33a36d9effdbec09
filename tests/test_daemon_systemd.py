"""The systemd units: ``systemd-analyze verify`` is clean and ``security --offline`` rates them well; the
instances of ``room-supervisor@.service`` (one daemon per core) get distinct ids, ports and spool files.

All run against a scratch root holding the units, a stand-in for the venv's entry point (verify checks that
ExecStart exists) and a copy of the host's own system units (for the targets they order against). What an
instance resolves to (``%i``, ``%H``) is what systemd itself reports: ``systemd --test`` loads the units from
the scratch root and dumps them, specifiers expanded.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
NAMES = ("room-supervisor.service", "room-supervisor@9108.service", "room-supervisor-consumer@participants.service",
         "room-supervisor-archive.service", "room-supervisor-archive.timer")
MAX_EXPOSURE = 2.0
MANAGER = Path("/usr/lib/systemd/systemd")
# Set per instance by room-supervisor@.service; the shared EnvironmentFile would override them for all instances.
PER_INSTANCE = ("RS_DAEMON_ID", "RS_DAEMON_HTTP_PORT", "RS_WRITER_SPOOL_DIR")

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Read only by the tests: one per module."""
    root = tmp_path_factory.mktemp("systemd") / "root"
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in [*UNITS.glob("*.service"), *UNITS.glob("*.timer")]:
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
    return subprocess.run(["systemd-analyze", *args], check=False, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("unit", NAMES)
def test_units_verify_clean(root, unit):
    out = analyze("verify", f"--root={root}", unit)
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out


@pytest.mark.parametrize("unit", [name for name in NAMES if name.endswith(".service")])
def test_units_exposure(root, unit):
    out = analyze("security", "--offline=true", f"--root={root}", unit)
    assert out.returncode == 0, out
    figure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert figure, out.stdout[-500:]
    print(figure.group(0))
    assert float(figure.group(1)) <= MAX_EXPOSURE


@pytest.mark.parametrize("name", ("room-supervisor.service", "room-supervisor@.service"))
def test_stop_timeout_is_above_the_drain_bound(name):
    from supervisor.settings import DaemonSettings

    unit = (UNITS / name).read_text()
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE).group(1))
    assert stop > DaemonSettings().drain_timeout + 5
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30",
                 "StateDirectory=room-supervisor room-supervisor/spool room-supervisor-archive"):
        assert line in unit.splitlines()


def service_lines(name: str) -> list[str]:
    """The directives of a unit's [Service] section, without comments."""
    text = (UNITS / name).read_text().split("[Service]", 1)[1].split("\n[", 1)[0]
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_template_runs_the_daemon_as_the_plain_unit_does():
    """Same command, user, state directory, timeouts and sandbox: only the per-instance environment differs."""
    plain = service_lines("room-supervisor.service")
    template = service_lines("room-supervisor@.service")
    extra = [line for line in template if line not in plain]
    assert extra == ["Environment=RS_DAEMON_ID=%H-%i RS_DAEMON_HTTP_PORT=%i"]
    assert [line for line in plain if line not in template] == []


def test_environment_file_leaves_instance_settings_alone():
    """EnvironmentFile= beats Environment=: a daemon id or port there would be every instance's."""
    example = (UNITS / "room-supervisor.env.example").read_text().splitlines()
    assert not [line for line in example if line.strip().startswith(PER_INSTANCE)]


def manager_dump(root: Path, unit: str) -> str:
    """``systemd --test --system --unit=UNIT``: the units of ``root`` as systemd loads them, specifiers expanded.

    Test mode refuses uid 0; as root it runs in a new user namespace (uid 65534 there, still the owner of the
    scratch root outside). Skips the test where neither works."""
    if not MANAGER.is_file():
        pytest.skip(f"{MANAGER} not installed")
    command = [str(MANAGER), "--test", "--system", f"--unit={unit}", "--no-pager"]
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("systemd --test refuses root and unshare is not installed")
        command = ["unshare", "--user", *command]
    paths = f"{root}/etc/systemd/system:{root}/usr/lib/systemd/system"
    out = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SYSTEMD_UNIT_PATH": paths})
    if out.returncode != 0 or f"-> Unit {unit}:" not in out.stdout:
        pytest.skip(f"systemd --test cannot run here: {out.returncode} {out.stderr[-300:]}")
    return out.stdout


def unit_section(dump: str, unit: str) -> dict[str, list[str]]:
    """A unit's properties in a manager dump: name -> its values, in order."""
    lines = dump.splitlines()
    start = lines.index(f"\t-> Unit {unit}:")
    props: dict[str, list[str]] = {}
    for line in lines[start + 1:]:
        if line.startswith("\t-> Unit "):
            break
        if line.startswith("\t\t") and not line.startswith("\t\t\t") and ": " in line:
            key, _, value = line[2:].partition(": ")
            props.setdefault(key, []).append(value)
    return props


def resolved(root: Path, unit: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(properties, Environment= as a dict) of ``unit`` as systemd resolves it."""
    props = unit_section(manager_dump(root, unit), unit)
    return props, dict(item.split("=", 1) for item in props.get("Environment", []))


def test_instances_get_their_own_id_port_and_spool(root):
    """Two instances on one host: distinct daemon ids (stable: host and instance), HTTP ports and spool files,
    each spool in a directory the sandbox lets the daemon write; the shared parts (user, state directory,
    config file, EnvironmentFile) are the same."""
    from eventstore.keys import encode_name
    from supervisor.settings import load_settings

    seen = []
    for port in (9108, 9109):
        unit = f"room-supervisor@{port}.service"
        props, env = resolved(root, unit)
        assert env["RS_DAEMON_ID"] == f"{socket.gethostname()}-{port}"
        settings = load_settings(environ={k: v for k, v in env.items() if k.startswith("RS_")})
        assert (settings.daemon.id, settings.daemon.http_port) == (env["RS_DAEMON_ID"], port)
        spool_dir = Path(settings.writer.spool_dir)
        assert spool_dir in [Path("/var/lib", d) for d in props["StateDirectory"]], (spool_dir, props["StateDirectory"])
        assert props["User"] == ["room-supervisor"] and props["DynamicUser"] == ["yes"]
        assert props["EnvironmentFile"] == ["/etc/room-supervisor/room-supervisor.env"]
        for dependency in ("Conflicts", "After"):  # values read "room-supervisor.service (origin-file)"
            assert "room-supervisor.service" in [value.split(" ")[0] for value in props[dependency]]
        spool = spool_dir / f"{encode_name(settings.daemon.id)}.spool"  # as supervisor.daemon.recovery.own_spool
        seen.append((settings.daemon.id, settings.daemon.http_port, spool, props["StateDirectory"]))
    (id_a, port_a, spool_a, state_a), (id_b, port_b, spool_b, state_b) = seen
    assert id_a != id_b and port_a != port_b and spool_a != spool_b
    assert state_a == state_b  # one spool directory: an instance that starts replays the spool of one gone for good


def test_plain_unit_differs_from_every_instance(root):
    """room-supervisor.service keeps the host name as its id; it shares port 9108 with @9108, hence Conflicts=."""
    props, env = resolved(root, "room-supervisor.service")
    assert not set(PER_INSTANCE) & set(env)
    assert props["User"] == ["room-supervisor"]
    assert props["StateDirectory"] == ["room-supervisor", "room-supervisor/spool", "room-supervisor-archive"]


def test_instance_name_must_be_a_port(root):
    """room-supervisor@foo.service is refused at start, naming the variable (exit 2 from the CLI)."""
    from supervisor.settings import SettingsError, load_settings

    _, env = resolved(root, "room-supervisor@foo.service")
    with pytest.raises(SettingsError, match="RS_DAEMON_HTTP_PORT"):
        load_settings(environ={k: v for k, v in env.items() if k.startswith("RS_")})
