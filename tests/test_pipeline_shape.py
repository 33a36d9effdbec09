"""A pipeline that cannot be used (its module does not import, a class instead of a factory, a factory of the
wrong signature or that returns the wrong thing) is reported when the daemon starts, with its traceback, and a
room that names it fails once with the reason, not after a restart budget of identical failures."""

from __future__ import annotations

import json
import uuid

import pytest

from daemonproc import TEST_PIPELINES, DaemonProcess, observing, run_cli, start_in_rooms
from eventstore.records import tag_of
from harness.util import async_wait_until
from transport.pipelines import PipelineUnusable, build_processors, load_pipeline

BROKEN = {
    "a_class": ("tests.pipelines:RaiseOnAudio", "is a class, not a factory function"),
    "one_arg": ("tests.pipelines:one_argument", "cannot be called as factory(transport, spec)"),
    "missing": ("tests.no_such_module:factory", "cannot import tests.no_such_module"),
    "not_there": ("tests.pipelines:no_such_function", "tests.pipelines has no no_such_function"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_an_unusable_pipeline_is_refused_with_what_to_do(name):
    target, says = BROKEN[name]
    with pytest.raises(PipelineUnusable) as caught:
        load_pipeline(name, {name: target})
    assert says in str(caught.value) and target in str(caught.value)
    if name == "missing":
        assert "virtualenv" in str(caught.value) and "Traceback" in caught.value.details


def test_a_factory_returning_the_wrong_thing_is_refused():
    definition = load_pipeline("wrong", {"wrong": "tests.pipelines:wrong_return"})
    with pytest.raises(PipelineUnusable, match="returned a RaiseOnAudio, not a list of FrameProcessors"):
        build_processors(definition, None, None)


@pytest.mark.livekit
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_the_daemon_reports_unusable_pipelines_at_start_and_fails_their_rooms_once(
        tmp_path, redis_url, livekit_server):
    tag = uuid.uuid4().hex[:6]
    pipelines = {**TEST_PIPELINES, **{name: target for name, (target, _) in BROKEN.items()},
                 "wrong": "tests.pipelines:wrong_return"}
    daemon = DaemonProcess(tmp_path, redis_url, livekit_server.url, pipelines=pipelines, restart_budget=5)
    rooms = {name: f"{name}-{tag}" for name in ("a_class", "missing", "wrong")}
    async with observing(daemon) as observer:
        await start_in_rooms(daemon, observer, [f"calm-{tag}"])
        log = daemon.log_tail(400)
        for name, (_, says) in BROKEN.items():
            assert f"pipeline {name} cannot be used: " in log and says in log, name
        assert "Traceback" in log and "pipelines ready: " in log
        for name, room in rooms.items():
            assert run_cli("join", room, "--pipeline", name, config=daemon.config).returncode == 0

        def failed() -> dict[str, str]:
            shown = json.loads(run_cli("rooms", "--json", config=daemon.config).stdout)["rooms"]
            return {room: shown.get(room, {}).get("desired", {}).get("failed", "") for room in rooms.values()}

        await async_wait_until(lambda: all(failed().values()), 90, "the rooms to be marked failed", 1.0)
        for name, room in rooms.items():
            records = await observer.records(room)
            kinds = [tag_of(r) for r in records]
            assert kinds.count("session_started") == 1, (room, kinds)
            [ended] = [r for r in records if tag_of(r) == "session_ended"]
            assert (ended.reason, ended.rejoin) == ("pipeline_error", False)
            assert name in failed()[room]
        assert "room marked failed (a restart would fail the same way" in daemon.log_tail(400)
        await daemon.sigterm_exits(0)
