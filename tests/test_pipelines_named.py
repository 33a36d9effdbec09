"""Pipelines by name only: built-ins, the daemon's ``[pipelines]``, entry points in ``room_supervisor.pipelines``;
anything else, in particular a ``module:function`` written into Redis, is refused before anything is imported."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis as syncredis

from daemonproc import REPO, DaemonProcess, cli_env, observing, run_cli, start_in_rooms
from eventstore.connection import connect
from eventstore.reader import RoomReader
from eventstore.records import tag_of
from eventstore.writer import EventWriter
from harness.util import async_wait_until
from transport import pipeline_names
from transport.pipeline_names import (
    ENTRY_POINT_GROUP,
    InvalidPipelineName,
    PipelineNotFound,
    known_names,
    reload_entry_points,
    resolve_target,
)
from transport.pipelines import BUILTIN, echo, listen, load_pipeline


class Sentinel:
    """A module on ``sys.path`` whose import appends a line to a file: proof of whether anything imported it."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.name = f"rs_sentinel_{uuid.uuid4().hex[:10]}"
        self.log = root / f"{self.name}.imported"
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{self.name}.py").write_text(
            f"with open({str(self.log)!r}, 'a') as f:\n    f.write('imported\\n')\n\n"
            "def factory(transport, spec):\n    return []\n\nNOT_CALLABLE = 3\n")
        monkeypatch.syspath_prepend(str(root))
        self._monkeypatch = monkeypatch

    @property
    def target(self) -> str:
        return f"{self.name}:factory"

    @property
    def imported(self) -> bool:
        return self.log.exists() or self.name in sys.modules

    def forget(self) -> None:
        sys.modules.pop(self.name, None)


@pytest.fixture
def sentinel(tmp_path, monkeypatch):
    s = Sentinel(tmp_path / "sentinel", monkeypatch)
    try:
        yield s
    finally:
        s.forget()


def make_dist(root: Path, dist: str, entries: dict[str, str]) -> Path:
    """An installed distribution (a ``.dist-info`` directory) with entry points in our group."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"  # as wheels name it: the stem is name-version
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = [f"[{ENTRY_POINT_GROUP}]", *(f"{name} = {target}" for name, target in entries.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def entry_points(tmp_path, monkeypatch):
    """``add(dist, {name: target})`` installs a distribution with entry points for this test only."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))

    def add(dist: str, entries: dict[str, str]) -> None:
        make_dist(root, dist, entries)
        reload_entry_points()

    reload_entry_points()
    yield add
    reload_entry_points()  # read again (without these) on the next lookup


# ----- resolution --------------------------------------------------------------------------------------------


def test_builtins_resolve_and_cannot_be_redefined(entry_points):
    entry_points("rs-shadow", {"echo": "nowhere.at.all:factory"})
    assert pipeline_names.BUILTIN_NAMES == tuple(BUILTIN)
    assert load_pipeline("echo").factory is echo
    assert load_pipeline("listen", {"listen": "nowhere.at.all:factory"}).factory is listen
    assert resolve_target("echo", {}) is None


def test_a_name_registered_in_settings_is_imported(sentinel):
    assert not sentinel.imported
    definition = load_pipeline("mine", {"mine": sentinel.target})
    assert definition.name == "mine" and definition.factory(None, None) == []
    assert sentinel.imported  # the control: a registered name does import its module


def test_an_entry_point_name_resolves_and_settings_win(entry_points, sentinel):
    entry_points("rs-ep-test", {"from_ep": sentinel.target, "bad name!": "x:y", "odd": "not a target"})
    assert "from_ep" in known_names({}) and "bad name!" not in known_names({})
    assert resolve_target("from_ep", {}) == sentinel.target
    assert load_pipeline("from_ep").factory(None, None) == []
    assert resolve_target("from_ep", {"from_ep": "mypkg.bot:factory"}) == "mypkg.bot:factory"
    with pytest.raises(PipelineNotFound, match="entry point odd of rs-ep-test"):
        load_pipeline("odd")


def test_two_packages_naming_one_pipeline_differently_is_refused(entry_points):
    entry_points("rs-ep-one", {"twice": "one.mod:factory"})
    entry_points("rs-ep-two", {"twice": "two.mod:factory"})
    with pytest.raises(PipelineNotFound, match="different entry points") as info:
        resolve_target("twice", {})
    assert "one.mod:factory" in str(info.value) and "two.mod:factory" in str(info.value)
    assert resolve_target("twice", {"twice": "one.mod:factory"}) == "one.mod:factory"


@pytest.mark.parametrize("how", ["module:function", "bare module name", "unregistered name"])
def test_anything_not_registered_is_refused_before_any_import(sentinel, entry_points, how):
    entry_points("rs-ep-other", {"other_ep": "tests.pipelines:handlers"})
    registered = {"other": "tests.pipelines:handlers"}
    name = {"module:function": sentinel.target, "bare module name": sentinel.name,
            "unregistered name": "no_such_pipeline"}[how]
    with pytest.raises(PipelineNotFound) as info:
        load_pipeline(name, registered)
    text = str(info.value)
    assert "[pipelines]" in text and ENTRY_POINT_GROUP in text
    if how == "module:function":
        assert isinstance(info.value, InvalidPipelineName) and "is not a registered name" in text
    else:
        assert f"unknown pipeline {name!r}" in text and "other" in text and "other_ep" in text
    assert not sentinel.imported


@pytest.mark.parametrize("target, says", [("no_such_module_at_all:factory", "cannot import"),
                                          ("{sentinel}:missing", "has no missing"),
                                          ("{sentinel}:NOT_CALLABLE", "not callable")])
def test_a_registered_target_that_does_not_load_is_named(sentinel, target, says):
    with pytest.raises(PipelineNotFound, match=says):
        load_pipeline("mine", {"mine": target.format(sentinel=sentinel.name)})


async def test_a_session_refuses_a_module_function_without_importing(sentinel, redis_url):
    """What the daemon does with ``rs:desired`` input: the session ends ``pipeline_error`` without rejoin, the
    detail says how to register a pipeline, and the module was never imported."""
    from transport.session import SessionSpec, run_session

    redis = connect(redis_url)
    writer = EventWriter(redis, producer="test")
    await writer.start()
    room = f"refused-{uuid.uuid4().hex[:6]}"
    try:
        spec = SessionSpec(room=room, session_id=uuid.uuid4().hex, identity="rs-bot-test", epoch=0,
                           producer="test", pipeline=sentinel.target, livekit_url="ws://127.0.0.1:1",
                           api_key="devkey", api_secret="secret", pipelines={"ok": "tests.pipelines:handlers"})
        outcome = await asyncio.wait_for(run_session(spec, writer, asyncio.Event()), 30)
        assert (outcome.reason, outcome.rejoin) == ("pipeline_error", False)
        assert "is not a registered name" in outcome.detail and "[pipelines]" in outcome.detail
        assert await writer.flush(10)
        records = [r for r in await RoomReader(redis).read(room) if tag_of(r).startswith("session_")]
        assert [tag_of(r) for r in records] == ["session_started", "session_ended"]
        assert records[-1].detail == outcome.detail
    finally:
        await writer.aclose()
        await redis.aclose()
    assert not sentinel.imported


# ----- the CLI -----------------------------------------------------------------------------------------------


def test_the_cli_accepts_registered_names_without_importing_them(tmp_path, redis_url, monkeypatch):
    """``join --pipeline NAME`` checks the name against the config and the entry points (metadata only): the
    target module is not imported, nor is pipecat."""
    s = Sentinel(tmp_path / "sentinel", monkeypatch)
    site = make_dist(tmp_path / "site", "rs-ep-cli", {"from_ep": s.target})
    config = tmp_path / "rs.toml"
    config.write_text(f'[redis]\nurl = "{redis_url}"\n\n[pipelines]\nmybot = "{s.target}"\n')
    code = (
        "import sys\n"
        "from supervisor.cli import main\n"
        f"for name in ('mybot', 'from_ep', 'echo'):\n"
        f"    assert main(['join', 'room ' + name, '--pipeline', name, '--config', {str(config)!r}]) == 0\n"
        "assert not [m for m in sys.modules if m == 'pipecat' or m.startswith('pipecat.')], 'pipecat imported'\n"
        f"assert {s.name!r} not in sys.modules\n"
    )
    env = cli_env({"PYTHONPATH": f"{REPO}:{site}:{s.log.parent}"})
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not s.log.exists()
    client = syncredis.Redis.from_url(redis_url)
    try:
        desired = {k.decode(): json.loads(v)["pipeline"] for k, v in client.hgetall("rs:desired").items()}
    finally:
        client.close()
    assert desired == {"room mybot": "mybot", "room from_ep": "from_ep", "room echo": "echo"}
    proc = run_cli("join", "room x", "--pipeline", "not_registered", env=cli_env({"REDIS_URL": redis_url}))
    assert proc.returncode == 2 and "unknown pipeline 'not_registered'" in proc.stderr
    assert "known pipelines are echo, listen" in proc.stderr and "Traceback" not in proc.stderr


# ----- the daemon --------------------------------------------------------------------------------------------


def _failed(client: syncredis.Redis, room: str) -> str:
    raw = client.hget("rs:desired", room)
    return json.loads(raw).get("failed", "") if raw else ""


@pytest.mark.livekit
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_daemon_refuses_a_module_function_written_into_redis(tmp_path, redis_url, livekit_server):
    """Someone with Redis access writes ``{"pipeline": "tests.pipelines:handlers"}`` into ``rs:desired``: the
    daemon marks the room failed with a reason that says how to register a pipeline, no bot joins, and the
    daemon never imports ``tests.pipelines`` (nor any other module named in Redis)."""
    tag = uuid.uuid4().hex[:6]
    calm, attacked, unknown = f"calm-{tag}", f"attacked-{tag}", f"unknown-{tag}"
    imports = tmp_path / "imports.log"
    # The daemon imports every *registered* pipeline at start; register none of the logging test modules.
    daemon = DaemonProcess(tmp_path, redis_url, livekit_server.url, env={"TESTS_IMPORT_LOG": str(imports)},
                           pipelines={"known_one": "transport.pipelines:echo"})
    client = syncredis.Redis.from_url(redis_url)
    try:
        async with observing(daemon) as observer:
            now = time.time()
            client.hset("rs:desired", attacked, json.dumps({"pipeline": "tests.pipelines:handlers", "since": now}))
            client.hset("rs:desired", unknown, json.dumps({"pipeline": "tests.daemon_pipelines", "since": now}))
            await start_in_rooms(daemon, observer, [calm], pipeline="listen", timeout=120)
            await async_wait_until(lambda: _failed(client, attacked) and _failed(client, unknown), 60,
                                   "both rooms marked failed", 0.2)

            why = _failed(client, attacked)
            assert why.startswith("pipeline_error: pipeline 'tests.pipelines:handlers' is not a registered name")
            assert "[pipelines]" in why and "room_supervisor.pipelines" in why
            why = _failed(client, unknown)
            assert why.startswith("pipeline_error: unknown pipeline 'tests.daemon_pipelines'")
            assert "known_one" in why  # the known names are listed

            for room in (attacked, unknown):
                records = await observer.records(room)
                sessions = [r for r in records if tag_of(r).startswith("session_")]
                assert [tag_of(r) for r in sessions] == ["session_started", "session_ended"], (room, records)
                assert "connected" not in [tag_of(r) for r in records]  # no restart, no join
                assert (sessions[-1].reason, sessions[-1].rejoin) == ("pipeline_error", False)
                assert await observer.bots(room) == []
            rooms = json.loads(run_cli("rooms", "--json", config=daemon.config).stdout)["rooms"]
            assert rooms[attacked]["desired"]["failed"].startswith("pipeline_error: ")
            assert "session_ended" not in await observer.types(calm)
            await daemon.sigterm_exits(0)
    finally:
        client.close()
    assert not imports.exists(), imports.read_text()
    # the control: the same environment does record an import of the module named in Redis
    subprocess.run([sys.executable, "-c", "import tests.pipelines"], cwd=REPO, check=True, timeout=60,
                   env=cli_env({"TESTS_IMPORT_LOG": str(imports)}), capture_output=True)
    assert imports.read_text().startswith("tests.pipelines ")
