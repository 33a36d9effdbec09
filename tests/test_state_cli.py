"""``state`` and ``events`` are honest: a room nobody recorded or asked for is an error (exit 2), a state no
consumer materialized is not shown as an all-zero one (exit 5), a materialized state says how far it is behind
the room's stream and which command catches it up, and ``--check`` compares at the materialized sequence number.

The CLI runs in this process (``supervisor.cli.main``); Redis is a real redis-server, records go through the real
writer and the real consumer.
"""

from __future__ import annotations

import asyncio
import json
import time

import msgspec
import pytest

from consumer_support import client, write
from eventstore.codec import frame_batch
from eventstore.keys import Keys
from eventstore.projections.participants import ParticipantsState
from eventstore.records import Connected, DataReceived, ParticipantConnected, Record, SessionStarted
from eventstore.writer import _APPEND_LUA
from supervisor.cli import main

ROOM = "state room: ü {1}"
KEYS = Keys()
NO_SUCH = ("no such room: 'tpyo' (it has no records and is not desired; `room-supervisor rooms` lists the known "
           "rooms)")


def cli(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([*args, "--redis-url", url])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def records(n: int, room: str = ROOM, first: int = 0) -> list[Record]:
    now = time.time()
    out: list[Record] = []
    if first == 0:
        out += [SessionStarted(room=room, session="s1", ts=now, identity="rs-bot-1", pipeline="echo"),
                Connected(room=room, session="s1", ts=now, identity="rs-bot-1"),
                ParticipantConnected(room=room, session="s1", ts=now, participant_id="alice", participant_sid="PA_1")]
    while len(out) < n:
        out.append(DataReceived(room=room, session="s1", ts=now, participant_id="alice", data=b"m", topic="chat"))
    return out


def append(url: str, n: int, *, first: int = 0) -> None:
    async def go() -> None:
        redis = client(url)
        try:
            await write(redis, records(n, first=first))
        finally:
            await redis.aclose()

    asyncio.run(go())


def consume(capsys, url: str, *names: str) -> None:
    for name in names or ("participants", "call-state"):
        code, _, err = cli(capsys, url, "consume", name, "--until-caught-up")
        assert code == 0, err


def sections(out: str) -> dict[str, str]:
    """header line of each ``# name ...`` section -> the JSON under it (as text)."""
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith("# "):
            current = line
            found[current] = []
        else:
            found[current].append(line)
    return {head: "\n".join(body) for head, body in found.items()}


@pytest.mark.parametrize("argv", [["state"], ["state", "--check"], ["state", "--replay"],
                                  ["state", "--projection", "call-state"], ["events"], ["events", "--json"],
                                  ["events", "--follow"], ["events", "--since", "3"]])
def test_a_room_nobody_recorded_or_asked_for_is_exit_2(redis_url, capsys, argv):
    append(redis_url, 5)  # another room exists: "tpyo" is not it
    code, out, err = cli(capsys, redis_url, argv[0], "tpyo", *argv[1:])
    assert (code, out) == (2, "")
    assert err.strip() == f"room-supervisor: {NO_SUCH}"


def test_a_desired_room_without_records_is_empty_not_an_error(redis_url, capsys):
    assert cli(capsys, redis_url, "join", "waiting room", "--pipeline", "echo")[0] == 0
    code, out, err = cli(capsys, redis_url, "events", "waiting room")
    assert (code, out, err) == (0, "", "")
    code, out, _ = cli(capsys, redis_url, "state", "waiting room", "--projection", "participants")
    assert code == 0
    assert out.splitlines()[0] == "# participants (nothing materialized): the room has no records yet"
    code, out, _ = cli(capsys, redis_url, "state", "waiting room", "--check")
    assert (code, out.splitlines()) == (0, ["participants: same at seq 0", "call-state: same at seq 0"])


def test_no_consumer_yet_is_exit_5_and_says_which_command_catches_up(redis_url, capsys):
    append(redis_url, 10)
    code, out, err = cli(capsys, redis_url, "state", ROOM)
    assert (code, err) == (5, "")
    assert out.splitlines() == [
        f"# {name}: not materialized: no consumer has folded this room yet (its stream is at seq 10; no consumer "
        f"of {name} is running). Catch it up: `room-supervisor consume {name} --redis-url {redis_url}`; or "
        f"rebuild it now: `room-supervisor state 'state room: ü {{1}}' --replay --redis-url {redis_url}`"
        for name in ("participants", "call-state")
    ]  # and no all-zero state
    code, out, _ = cli(capsys, redis_url, "state", ROOM, "--check")
    assert code == 5
    assert [line.split(":", 2)[:2] for line in out.splitlines()] == [["participants", " not materialized"],
                                                                     ["call-state", " not materialized"]]
    code, out, _ = cli(capsys, redis_url, "state", ROOM, "--replay", "--projection", "participants")
    assert code == 0 and out.startswith("# participants (replayed from the stream, up to seq 10)\n")
    assert json.loads(out.split("\n", 1)[1])["counters"]["data_messages"] == 7


def test_lag_is_reported_and_check_compares_at_the_materialized_seq(redis_url, capsys):
    append(redis_url, 10)
    consume(capsys, redis_url)
    append(redis_url, 3, first=10)
    behind = ("3 record(s) behind the stream (seq 13), and no consumer of participants is running: "
              f"`room-supervisor consume participants --redis-url {redis_url}` catches it up")
    code, out, _ = cli(capsys, redis_url, "state", ROOM, "--projection", "participants")
    assert code == 5
    [(head, body)] = sections(out).items()
    assert head == f"# participants (materialized, seq 10): {behind}"
    assert msgspec.json.decode(body, type=ParticipantsState).counters.data_messages == 7  # as of seq 10

    code, out, _ = cli(capsys, redis_url, "state", ROOM, "--check")
    assert code == 5
    assert out.splitlines() == [f"participants: same at seq 10; {behind}",
                                f"call-state: same at seq 10; {behind.replace('participants', 'call-state')}"]

    consume(capsys, redis_url, "participants")
    code, out, _ = cli(capsys, redis_url, "state", ROOM, "--check")
    assert code == 5 and out.splitlines()[0] == "participants: same at seq 13"
    consume(capsys, redis_url, "call-state")
    code, out, _ = cli(capsys, redis_url, "state", ROOM, "--check")
    assert (code, out.splitlines()) == (0, ["participants: same at seq 13", "call-state: same at seq 13"])
    code, out, _ = cli(capsys, redis_url, "state", ROOM)
    assert code == 0
    assert [h for h in sections(out)] == ["# participants (materialized, seq 13): up to date with the stream",
                                         "# call-state (materialized, seq 13): up to date with the stream"]


def test_behind_with_a_consumer_running_is_exit_0_and_a_silent_one_is_not_running(redis_url, capsys):
    append(redis_url, 10)
    consume(capsys, redis_url, "participants")
    append(redis_url, 2, first=10)
    redis = _sync(redis_url)
    now_ms = int(time.time() * 1000)
    redis.zadd(KEYS.consumers("participants"), {"busy-one": now_ms})  # a live consumer's heartbeat
    code, out, _ = cli(capsys, redis_url, "state", ROOM, "--projection", "participants")
    assert code == 0
    assert out.splitlines()[0] == ("# participants (materialized, seq 10): 2 record(s) behind the stream (seq 12); "
                                   "1 consumer(s) of participants running, catching up")
    redis.zadd(KEYS.consumers("participants"), {"busy-one": now_ms - 60_000})  # silent for 3 leases: gone
    code, out, _ = cli(capsys, redis_url, "state", ROOM, "--projection", "participants")
    assert code == 5 and "no consumer of participants is running" in out.splitlines()[0]
    redis.close()


def test_a_difference_is_exit_3_even_when_behind(redis_url, capsys):
    append(redis_url, 6)
    consume(capsys, redis_url)
    redis = _sync(redis_url)
    key = KEYS.state(ROOM, "participants")
    state = json.loads(redis.hget(key, "state"))
    state["counters"]["joins"] = 99
    redis.hset(key, "state", json.dumps(state))
    redis.close()
    append(redis_url, 2, first=6)
    code, out, _ = cli(capsys, redis_url, "state", ROOM, "--check")
    assert code == 3
    assert out.splitlines()[0].startswith("participants: DIFFERENT at seq 6; 2 record(s) behind the stream (seq 8)")


def test_the_hint_carries_this_commands_settings_and_a_custom_projection(redis_url, capsys):
    append(redis_url, 4)
    custom = "eventstore.examples.third_projection:PROJECTION"
    code, out, _ = cli(capsys, redis_url, "state", ROOM, "--projection", custom)
    assert code == 5
    assert (f"no consumer of data-topics is running). Catch it up: `room-supervisor consume {custom} --redis-url "
            f"{redis_url}`") in out
    code, _, err = cli(capsys, redis_url, "state", ROOM, "--prefix", "other")
    assert code == 2 and "no such room" in err  # another prefix: another set of rooms


def test_a_last_record_this_version_cannot_decode_does_not_look_like_lag(redis_url, capsys):
    """A newer writer's record type is passed over by the consumer (its seq is never applied): the state is still
    up to date with the stream, as the consumer itself judges it (by entry id)."""
    append(redis_url, 5)

    async def future() -> None:
        redis = client(redis_url)
        try:
            rec = (b'{"type":"hologram_joined","seq":0,"v":2,"room":' + msgspec.json.encode(ROOM)
                   + b',"session":"s9","ts":1.0}')
            reply = await redis.eval(_APPEND_LUA, 3, KEYS.events(ROOM), KEYS.meta(ROOM), KEYS.lease(ROOM), 0, -1,
                                     "future-1", 0, frame_batch([("hologram_joined", rec, b"")]))
            assert reply[0] == b"OK"
        finally:
            await redis.aclose()

    asyncio.run(future())
    consume(capsys, redis_url)
    code, out, _ = cli(capsys, redis_url, "state", ROOM, "--check")
    assert (code, out.splitlines()) == (0, ["participants: same at seq 5", "call-state: same at seq 5"])


def test_events_since_is_exclusive_and_never_negative(redis_url, capsys):
    append(redis_url, 6)
    code, out, _ = cli(capsys, redis_url, "events", ROOM, "--since", "4")
    assert code == 0 and [int(line.split()[0]) for line in out.splitlines()] == [5, 6]
    code, out, _ = cli(capsys, redis_url, "events", ROOM, "--since", "6")
    assert (code, out) == (0, "")
    code, out, err = cli(capsys, redis_url, "events", ROOM, "--since", "-1")
    assert (code, out) == (2, "") and "--since must be a sequence number (0 or more), got -1" in err


def _sync(url: str):
    import redis as syncredis

    return syncredis.Redis.from_url(url)
