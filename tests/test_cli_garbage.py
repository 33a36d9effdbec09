"""Garbage in config files, environment variables, command-line arguments, control commands and room names:
a clear one-line error, a non-zero exit, no traceback, and nothing already desired is lost or changed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import redis as syncredis

from daemonproc import REPO, DaemonProcess, cli_env, run_cli
from harness.util import free_port, wait_until
from supervisor.cli import main

GOOD_ROOM = "keep me {1}"


@pytest.fixture
def desired(redis_url, monkeypatch):
    """A Redis with one desired room; yields a function returning the raw desired hash (must not change)."""
    for name in list(os.environ):
        if name.startswith(("RS_", "REDIS_", "LIVEKIT_", "ROOM_SUPERVISOR")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["join", GOOD_ROOM, "--pipeline", "echo"]) == 0
    client = syncredis.Redis.from_url(redis_url)
    before = client.hgetall("rs:desired")
    assert list(before) == [GOOD_ROOM.encode()]
    yield lambda: client.hgetall("rs:desired") == before
    client.close()


def run(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    "room",
    ["", "   ", "tab\there", "new\nline", "bell\x07", "x" * 1025, "\udcff broken utf-8"],
)
@pytest.mark.parametrize("command", ["join", "leave", "events", "state"])
def test_garbage_room_names(desired, capsys, command, room):
    code, err = run([command, room], capsys)
    assert code == 2
    assert "room name" in err and "Traceback" not in err
    assert desired()


@pytest.mark.parametrize("pipeline", ["x y", "nope", "a/b", "ünï", "x" * 101])
def test_garbage_pipeline_names(desired, capsys, pipeline):
    code, err = run(["join", "another room", "--pipeline", pipeline], capsys)
    assert code == 2
    assert "unknown pipeline" in err and "[pipelines]" in err and "room_supervisor.pipelines" in err
    assert "Traceback" not in err
    assert desired()


@pytest.mark.parametrize("pipeline", [":", "mod:", ":func", "1abc:def", "mod:func:more", "a..b:c",
                                      "tests.pipelines:handlers", "transport.pipelines:echo"])
def test_module_function_is_refused_with_how_to_register(desired, capsys, pipeline):
    code, err = run(["join", "another room", "--pipeline", pipeline], capsys)
    assert code == 2
    assert "is not a registered name" in err and "Traceback" not in err
    assert '[pipelines] table of the config file' in err and 'mybot = "mypkg.bot:factory"' in err
    assert "room_supervisor.pipelines" in err
    assert desired()


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["join"], ["leave"], ["events", "r", "--since", "soon"], ["join", "r", "--bogus"],
     ["rooms", "extra-argument"], ["state", "r", "--replay", "--check"]],
)
def test_garbage_arguments(desired, capsys, argv):
    code, err = run(argv, capsys)
    assert code == 2
    assert "usage:" in err
    assert desired()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[daemon\n", "not valid TOML"),
        ("[bogus]\na = 1\n", "unknown section"),
        ("[daemon]\nmax_rooms = 'many'\n", "max_rooms"),
        ("\x00\x01\x02", "TOML"),
        ("[redis]\nprefix = 'has space'\n", "redis.prefix"),
        ("[daemon]\ndefault_pipeline = 'not a pipeline'\n", "unknown pipeline"),
        ("[daemon]\ndefault_pipeline = 'mypkg.bot:factory'\n", "not a registered name"),
        ("[pipelines]\necho = 'mypkg.bot:factory'\n", "pipelines.echo: echo is built in"),
        ("[pipelines]\nmybot = 'not a target'\n", "pipelines.mybot"),
        ("[pipelines]\nmybot = 3\n", "pipelines.mybot"),
        ("[pipelines]\n'my bot' = 'a.b:c'\n", "'my bot' is not a pipeline name"),
        ("pipelines = 'a.b:c'\n", "[pipelines] must be a table"),
    ],
)
def test_garbage_config_files(desired, capsys, tmp_path, text, says):
    path = tmp_path / "garbage.toml"
    path.write_text(text)
    for argv in (["join", "another room"], ["leave", "another room"], ["rooms"]):
        code, err = run([*argv, "--config", str(path)], capsys)
        if "default_pipeline" in text and argv[0] != "join":
            assert code == 0  # only join uses the default pipeline
            continue
        assert code == 2, (argv, err)
        assert says in err and "Traceback" not in err
    assert desired()


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("RS_DAEMON_DRAIN_TIMEOUT", "soon", "drain_timeout"),
        ("RS_DAEMON_NO_SUCH_SETTING", "1", "RS_DAEMON_NO_SUCH_SETTING"),
        ("REDIS_URL", "localhost:6379", "redis.url"),
        ("LIVEKIT_URL", "ftp://livekit", "livekit.url"),
        ("ROOM_SUPERVISOR_CONFIG", "/nonexistent/room-supervisor.toml", "does not exist"),
    ],
)
def test_garbage_environment(desired, capsys, monkeypatch, name, value, says):
    monkeypatch.setenv(name, value)
    code, err = run(["leave", GOOD_ROOM], capsys)
    assert code == 2
    assert says in err
    monkeypatch.undo()
    assert desired()


def test_garbage_control_state_is_shown_and_skipped(desired, capsys, redis_url):
    """Entries written by hand into rs:desired and rs:control do not break the CLI, and are not overwritten."""
    client = syncredis.Redis.from_url(redis_url)
    try:
        client.hset("rs:desired", "handmade", "{not json")
        client.hset("rs:desired", "wrong shape", json.dumps({"pipeline": 3}))
        client.xadd("rs:control", {"cmd": "explode", "room": b"\xff\xfe"})
        code, err = run(["rooms", "--json"], capsys)
        assert code == 0, err
    finally:
        client.close()
    code = main(["rooms", "--json"])
    shown = json.loads(capsys.readouterr().out)["rooms"]
    assert code == 0
    assert shown["handmade"]["desired"] == {"error": "unreadable desired-state entry"}
    assert shown[GOOD_ROOM]["desired"]["pipeline"] == "echo"


def test_rooms_lists_the_newest_recorded_rooms_when_there_are_too_many(desired, capsys, redis_url):
    """``rs:rooms`` scores a room by when it was first recorded; past 1,000 rooms ``rooms`` shows the newest and
    says how many there are."""
    client = syncredis.Redis.from_url(redis_url)
    try:
        client.zadd("rs:rooms", {f"room-{i:04d}": 1_700_000_000 + i for i in range(1005)})
    finally:
        client.close()
    assert main(["rooms", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    recorded = [name for name in shown["rooms"] if name.startswith("room-")]
    assert shown["recorded_rooms"] == 1005 and len(recorded) == 1000
    assert "room-1004" in recorded and "room-0004" not in recorded and "room-0005" in recorded
    assert GOOD_ROOM in shown["rooms"]  # desired rooms are always listed
    assert main(["rooms"]) == 0
    assert "1005 rooms have recorded events; the newest 1000 are listed" in capsys.readouterr().out


@pytest.mark.parametrize("scheme", ["redis://127.0.0.1:{}/0", "redis+cluster://127.0.0.1:{},127.0.0.1:{}"])
@pytest.mark.parametrize("command", [["join", "a room"], ["rooms"], ["events", "a room"], ["state", "a room"]])
def test_redis_unreachable_is_a_clear_error(capsys, monkeypatch, scheme, command):
    monkeypatch.setenv("REDIS_URL", scheme.format(free_port(), free_port()))
    code, err = run(command, capsys)
    assert code == 1
    assert "cannot reach Redis" in err and "Traceback" not in err


def test_real_process_exit_codes_and_no_traceback(redis_url):
    env = cli_env({"REDIS_URL": redis_url})
    bad_utf8 = [sys.executable, "-m", "supervisor.cli", "join", os.fsencode("room-\udcff")]
    proc = subprocess.run(bad_utf8, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "room name" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("join", "", env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run_cli("join", "fine room", env={**env, "RS_DAEMON_MAX_ROOMS": "-3"})
    assert proc.returncode == 2 and "daemon.max_rooms must be positive" in proc.stderr


def test_serve_refuses_a_spool_dir_it_cannot_use(tmp_path, redis_url):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    daemon = DaemonProcess(tmp_path, redis_url, f"ws://127.0.0.1:{free_port()}")
    daemon.config.write_text(daemon.config.read_text().replace(str(tmp_path / "spool"), str(not_a_dir / "spool")))
    proc = run_cli("serve", config=daemon.config, env=daemon.env)
    assert proc.returncode == 1
    assert "spool directory" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_refuses_a_second_daemon_with_the_same_id(tmp_path, redis_url):
    # LiveKit is not there: the first daemon waits for it (not ready), holding its id's spool lock
    first = DaemonProcess(tmp_path, redis_url, f"ws://127.0.0.1:{free_port()}", daemon_id="same")
    first.start()
    try:
        wait_until(lambda: "waiting" in first.log_tail(), 60, "the first daemon to wait for LiveKit")
        proc = run_cli("serve", config=first.config, env=first.env)
        assert proc.returncode == 1
        assert "another daemon with id 'same'" in proc.stderr
        taken = DaemonProcess(tmp_path / "other", redis_url, "ws://127.0.0.1:1", daemon_id="other")
        taken.config.write_text(taken.config.read_text().replace(f"http_port = {taken.http_port}",
                                                                 f"http_port = {first.http_port}"))
        proc = run_cli("serve", config=taken.config, env=taken.env)
        assert proc.returncode == 1 and "cannot listen" in proc.stderr
        first.signal(signal.SIGTERM)
        assert wait_until(lambda: first.proc.poll() is not None, 30, "exit") and first.proc.returncode == 0
    finally:
        first.stop()
