"""Scripted room stories through the real writer and the real runner, against a real redis-server.

For every story: the state a :class:`ProjectionRunner` materializes (burst mode) equals ``replay()`` and a fold
in memory, for both built-in projections (and the example's ``data-topics``); it has the expected content; and
``room-supervisor state ROOM`` / ``--replay`` / ``--check`` (via ``supervisor.cli.main``) show the same and
exit 0. Sync tests: the CLI runs its own event loop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest

from consumer_support import ORDER_CHECK, assert_materialized_equals_replay, catch_up, client, write
from eventstore.consumer import materialized
from eventstore.keys import Keys
from eventstore.projections.callstate import CALL_STATE, CallState
from eventstore.projections.participants import PARTICIPANTS, ParticipantsState
from eventstore.records import (
    AudioTrackSubscribed, AudioTrackUnsubscribed, BeforeDisconnect, Connected, DataReceived, Disconnected,
    FirstParticipantJoined, ParticipantConnected, ParticipantDisconnected, ParticipantLeft, Reconnected,
    Reconnecting, Record, SessionEnded, SessionStarted, VideoTrackSubscribed, VideoTrackUnsubscribed,
)
from eventstore.examples.third_projection import PROJECTION as TOPICS
from eventstore.examples.third_projection import SERVER, TopicsState
from strategies import BASE_TS, Script
from supervisor.cli import main
from harness.fixtures import both_redis_url  # noqa: F401 - every test here runs on one server and on a cluster

ROOM = "support call: ü {7}*"  # spaces, unicode, ':' '{' '}' '*' all go through key encoding
PROJECTIONS = (PARTICIPANTS, CALL_STATE, TOPICS, ORDER_CHECK)


def cli(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main([*args, "--redis-url", url])
    return code, capsys.readouterr().out


def sections(out: str) -> dict[str, Any]:
    """``state`` output: '# <name> (...)' headers, each followed by the state as indented JSON."""
    found: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("# "):
            current = line[2:].split(" ", 1)[0]
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return {name: json.loads("\n".join(lines)) for name, lines in found.items()}


def as_json(state: Any) -> Any:
    return json.loads(msgspec.json.encode(state))


def run_story(url: str, capsys: pytest.CaptureFixture[str], records: list[Record],
              ) -> tuple[ParticipantsState, CallState, TopicsState]:
    """Write, materialize with burst runners, check against replay, check the CLI; return the states."""

    async def go() -> tuple[Any, ...]:
        redis = client(url)
        try:
            await write(redis, records)
            for p in PROJECTIONS:
                assert await catch_up(redis, p) == len(records)
            await assert_materialized_equals_replay(redis, {ROOM: records}, PROJECTIONS)
            return tuple([(await materialized(redis, ROOM, p))[0] for p in PROJECTIONS[:3]])
        finally:
            await redis.aclose()

    part, call, topics = asyncio.run(go())
    n = len(records)

    code, out = cli(capsys, url, "state", ROOM)
    assert code == 0
    assert f"# participants (materialized, seq {n})" in out and f"# call-state (materialized, seq {n})" in out
    shown = sections(out)
    assert shown == {"participants": as_json(part), "call-state": as_json(call)}

    code, out = cli(capsys, url, "state", ROOM, "--replay")
    assert code == 0
    assert sections(out) == shown

    code, out = cli(capsys, url, "state", ROOM, "--check")
    assert code == 0
    assert out.splitlines() == [f"participants: same at seq {n}", f"call-state: same at seq {n}"]

    custom = "eventstore.examples.third_projection:PROJECTION"
    code, out = cli(capsys, url, "state", ROOM, "--projection", custom, "--check")
    assert (code, out.strip()) == (0, f"{custom}: same at seq {n}")
    return part, call, topics


def story() -> Script:
    return Script(ROOM)


def bot_joins(s: Script, *present: str, session: str = "s1", cause: str = "join") -> None:
    s(SessionStarted, identity="bot-1", pipeline="echo", cause=cause, session=session)
    s(Connected, identity="bot-1", participant_sid="PA_bot", participants=list(present))


def arrives(s: Script, who: str, sid: str, first: bool = False) -> None:
    s(ParticipantConnected, participant_id=who, participant_sid=sid, kind="STANDARD")
    if first:
        s(FirstParticipantJoined, participant_id=who, participant_sid=sid)


def leaves(s: Script, who: str, sid: str, reason: str = "CLIENT_INITIATED") -> None:
    """pipecat reports one departure twice: participant_disconnected, then participant_left."""
    s(ParticipantDisconnected, participant_id=who, participant_sid=sid, reason=reason)
    s(ParticipantLeft, participant_id=who, participant_sid=sid, disconnect_reason=reason)


# --- stories ------------------------------------------------------------------------------------------------


def test_join(redis_url, capsys):
    s = story()
    bot_joins(s)
    arrives(s, "alice", "PA_1", first=True)
    part, call, _ = run_story(redis_url, capsys, s.records)

    assert part.bot == "connected" and part.session == "s1" and part.last_seq == 4
    assert list(part.present) == ["alice"]
    alice = part.present["alice"]
    assert (alice.sid, alice.joined_at, alice.reported) == ("PA_1", BASE_TS + 3, True)
    assert part.people["alice"].joins == 1 and part.people["alice"].rejoins == 0
    assert (part.counters.joins, part.counters.sessions, part.counters.peak_present) == (1, 1, 1)
    assert part.counters.anomalies == 0 and part.left == {} and part.pending == {}

    assert (call.state, call.phase, call.remote, call.session) == ("joined", "active", ("alice",), "s1")
    assert [(t.to_state, t.to_phase) for t in call.history] == [
        ("joining", "idle"), ("joined", "waiting"), ("joined", "active")]
    assert call.counters.sessions == 1 and call.counters.anomalies == 0


def test_leave(redis_url, capsys):
    s = story()
    bot_joins(s)
    arrives(s, "alice", "PA_1", first=True)
    leaves(s, "alice", "PA_1")
    part, call, _ = run_story(redis_url, capsys, s.records)

    assert part.present == {}
    gone = part.left["alice"]
    assert (gone.reason, gone.kind, gone.seen) == ("CLIENT_INITIATED", "observed", 3)  # the pair counted once
    assert (gone.joined_at, gone.left_at) == (BASE_TS + 3, BASE_TS + 5)
    assert part.people["alice"].seconds == 2.0
    assert (part.counters.joins, part.counters.leaves, part.counters.anomalies) == (1, 1, 0)

    assert (call.state, call.phase, call.remote) == ("joined", "waiting", ())
    assert call.cause is not None and (call.cause.event, call.cause.reason) == ("participant_disconnected", "alice")


def test_rejoin(redis_url, capsys):
    s = story()
    bot_joins(s)
    arrives(s, "alice", "PA_1", first=True)
    leaves(s, "alice", "PA_1", reason="SIGNAL_CLOSE")
    arrives(s, "alice", "PA_2")
    part, call, _ = run_story(redis_url, capsys, s.records)

    assert part.present["alice"].sid == "PA_2" and part.present["alice"].joined_at == BASE_TS + 7
    assert "alice" not in part.left
    stats = part.people["alice"]
    assert (stats.joins, stats.rejoins, stats.seconds) == (2, 1, 2.0)
    assert (part.counters.joins, part.counters.rejoins, part.counters.leaves) == (2, 1, 1)
    assert (call.phase, call.remote) == ("active", ("alice",))
    assert [t.to_phase for t in call.history][-2:] == ["waiting", "active"]


def test_two_people(redis_url, capsys):
    s = story()
    bot_joins(s)
    arrives(s, "alice", "PA_1", first=True)
    arrives(s, "bob", "PA_2")
    leaves(s, "bob", "PA_2", reason="DUPLICATE_IDENTITY")
    part, call, _ = run_story(redis_url, capsys, s.records)

    assert list(part.present) == ["alice"] and list(part.left) == ["bob"]
    assert part.left["bob"].reason == "DUPLICATE_IDENTITY"
    assert (part.counters.joins, part.counters.leaves, part.counters.peak_present) == (2, 1, 2)
    assert (call.state, call.phase, call.remote) == ("joined", "active", ("alice",))


def test_bot_full_reconnect(redis_url, capsys):
    """rtc full reconnect: a synthetic departure for everyone, re-created participants, then reconnected with
    the snapshot. Nobody really left: presence continues, no rejoin is counted."""
    s = story()
    bot_joins(s)
    arrives(s, "alice", "PA_1", first=True)
    arrives(s, "bob", "PA_2")
    s(AudioTrackSubscribed, participant_id="alice", participant_sid="PA_1", track_sid="TR_A")
    s(Reconnecting)
    leaves(s, "alice", "PA_1", reason="UNKNOWN")
    leaves(s, "bob", "PA_2", reason="UNKNOWN")
    arrives(s, "alice", "PA_3")  # re-created before reconnected
    s(Reconnected, participants=["alice", "bob"])  # bob is only in the snapshot
    part, call, _ = run_story(redis_url, capsys, s.records)

    assert part.bot == "connected" and part.window_ts is None
    assert set(part.present) == {"alice", "bob"} and part.pending == {} and part.left == {}
    assert part.present["alice"].joined_at == BASE_TS + 3 and part.present["alice"].sid == "PA_3"
    assert part.present["alice"].audio == ()  # subscriptions do not survive a full reconnect
    assert part.present["bob"].joined_at == BASE_TS + 5
    assert {who: st.rejoins for who, st in part.people.items()} == {"alice": 0, "bob": 0}
    assert (part.counters.reconnects, part.counters.leaves, part.counters.anomalies) == (1, 0, 0)

    assert (call.state, call.phase, call.reconnect, call.pending) == ("joined", "active", "", ())
    assert set(call.remote) == {"alice", "bob"}
    assert [t.to_state for t in call.history][-2:] == ["reconnecting", "joined"]
    assert call.counters.resumes == 1 and call.counters.anomalies == 0


def test_bot_loses_room_and_rejoins(redis_url, capsys):
    """The bot's session ends with rejoin; while it is away bob leaves unseen; the new session's snapshot
    closes the window: bob left while the bot was away, alice stayed (no rejoin)."""
    s = story()
    bot_joins(s)
    arrives(s, "alice", "PA_1", first=True)
    arrives(s, "bob", "PA_2")
    s(Disconnected, reason="SIGNAL_CLOSE")
    away = s.ts
    s(SessionEnded, reason="connection_lost", rejoin=True)
    bot_joins(s, "alice", session="s2", cause="rejoin")
    part, call, _ = run_story(redis_url, capsys, s.records)

    assert part.bot == "connected" and part.session == "s2"
    assert list(part.present) == ["alice"] and part.present["alice"].joined_at == BASE_TS + 3
    bob = part.left["bob"]
    assert (bob.reason, bob.kind, bob.left_at) == ("left_while_bot_away", "inferred", away)
    assert part.people["alice"].rejoins == 0
    assert (part.counters.sessions, part.counters.bot_disconnects) == (2, 1)

    assert (call.state, call.phase, call.session, call.remote) == ("joined", "active", "s2", ("alice",))
    assert [t.to_state for t in call.history if t.from_state != t.to_state][-4:] == [
        "left", "reconnecting", "joining", "joined"]
    assert (call.counters.rejoins, call.counters.sessions, call.counters.anomalies) == (1, 2, 0)


def test_bot_removed_by_server(redis_url, capsys):
    s = story()
    bot_joins(s)
    arrives(s, "alice", "PA_1", first=True)
    s(Disconnected, reason="PARTICIPANT_REMOVED")
    removed_at = s.ts
    s(SessionEnded, reason="removed", rejoin=False, detail="removed by the server")
    part, call, _ = run_story(redis_url, capsys, s.records)

    assert part.bot == "idle" and part.present == {} and part.window_ts is None
    gone = part.left["alice"]
    assert (gone.reason, gone.kind, gone.left_at) == ("removed", "session_end", removed_at)
    assert (part.counters.bot_disconnects, part.counters.leaves) == (1, 1)

    assert (call.state, call.phase, call.remote) == ("left", "ended", ())
    assert call.cause is not None and (call.cause.event, call.cause.reason) == ("session_ended", "removed")
    assert call.history[-2].cause.reason == "PARTICIPANT_REMOVED"
    assert call.counters.failures == 0 and call.counters.anomalies == 0


def test_room_closed(redis_url, capsys):
    s = story()
    bot_joins(s)
    arrives(s, "alice", "PA_1", first=True)
    arrives(s, "bob", "PA_2")
    s(Disconnected, reason="ROOM_DELETED")
    s(SessionEnded, reason="room_closed", rejoin=False)
    part, call, _ = run_story(redis_url, capsys, s.records)

    assert part.bot == "idle" and part.present == {}
    assert {who: (d.reason, d.kind) for who, d in part.left.items()} == {
        "alice": ("room_closed", "session_end"), "bob": ("room_closed", "session_end")}
    assert (call.state, call.phase) == ("left", "ended")
    assert call.cause is not None and call.cause.reason == "room_closed"


def test_bot_leaves_on_purpose(redis_url, capsys):
    s = story()
    bot_joins(s)
    arrives(s, "alice", "PA_1", first=True)
    s(BeforeDisconnect)
    s(Disconnected, reason="CLIENT_INITIATED", local=True)
    s(SessionEnded, reason="drained", rejoin=False)
    part, call, _ = run_story(redis_url, capsys, s.records)

    assert part.bot == "idle" and part.left["alice"].reason == "drained"
    assert [t.to_state for t in call.history if t.from_state != t.to_state][-2:] == ["leaving", "left"]
    assert (call.state, call.phase, call.counters.anomalies) == ("left", "ended", 0)


def test_data_messages(redis_url, capsys):
    s = story()
    bot_joins(s)
    arrives(s, "alice", "PA_1", first=True)
    payloads = [("alice", b"hello", "chat"), ("alice", "grüß".encode(), "chat"), (None, b"\x00\xff\x00", "ops"),
                ("alice", b"", "chat"), (None, b"{\"k\": 1}", "chat")]
    for who, data, topic in payloads:
        s(DataReceived, participant_id=who, participant_sid="PA_1" if who else "", data=data, topic=topic,
          reliable=who is not None)
    part, call, topics = run_story(redis_url, capsys, s.records)

    c = part.counters
    assert (c.data_messages, c.data_bytes) == (5, 5 + 6 + 3 + 0 + 8)
    assert (c.server_messages, c.server_bytes) == (2, 3 + 8)
    assert (part.people["alice"].messages, part.people["alice"].bytes) == (3, 11)
    assert call.history[-1].cause.event == "participant_connected"  # data changes nothing there

    assert set(topics.topics) == {"chat", "ops"}
    chat, ops = topics.topics["chat"], topics.topics["ops"]
    assert (chat.messages, chat.bytes, chat.senders) == (4, 19, {"alice": 3, SERVER: 1})
    assert (ops.messages, ops.bytes, ops.senders) == (1, 3, {SERVER: 1})
    assert (chat.first_ts, chat.last_ts) == (BASE_TS + 5, BASE_TS + 9)

    async def payloads_back() -> list[bytes]:
        from eventstore.reader import RoomReader

        redis = client(redis_url)
        try:
            return [r.data for r in await RoomReader(redis).read(ROOM) if isinstance(r, DataReceived)]
        finally:
            await redis.aclose()

    assert asyncio.run(payloads_back()) == [p[1] for p in payloads]  # bytes exact through the stream


def test_tracks(redis_url, capsys):
    s = story()
    bot_joins(s)
    arrives(s, "alice", "PA_1", first=True)
    s(AudioTrackSubscribed, participant_id="alice", participant_sid="PA_1", track_sid="TR_A")
    s(VideoTrackSubscribed, participant_id="alice", participant_sid="PA_1", track_sid="TR_V", video_source="camera")
    s(VideoTrackSubscribed, participant_id="alice", participant_sid="PA_1", track_sid="TR_S",
      video_source="screen_share")
    s(VideoTrackUnsubscribed, participant_id="alice", participant_sid="PA_1", track_sid="TR_V",
      video_source="camera")
    s(AudioTrackSubscribed, participant_id="alice", participant_sid="PA_1", track_sid="TR_B")
    s(AudioTrackUnsubscribed, participant_id="alice", participant_sid="PA_1", track_sid="TR_A")
    part, call, _ = run_story(redis_url, capsys, s.records)

    alice = part.present["alice"]
    assert [t.track_sid for t in alice.audio] == ["TR_B"]
    assert [(t.track_sid, t.source) for t in alice.video] == [("TR_S", "screen_share")]
    assert (part.counters.tracks_subscribed, part.counters.tracks_unsubscribed) == (4, 2)
    assert part.counters.anomalies == 0
    assert (call.state, call.phase) == ("joined", "active")


def test_check_reports_a_corrupted_state(redis_url, capsys):
    """``state --check`` exits 3 when the materialized state differs from the replay (here: tampered with)."""
    s = story()
    bot_joins(s)
    arrives(s, "alice", "PA_1", first=True)
    run_story(redis_url, capsys, s.records)

    async def corrupt() -> None:
        redis = client(redis_url)
        try:
            key = Keys().state(ROOM, PARTICIPANTS.name)
            state = msgspec.json.decode(await redis.hget(key, "state"), type=ParticipantsState)
            tampered = msgspec.structs.replace(state, counters=msgspec.structs.replace(state.counters, joins=99))
            await redis.hset(key, "state", msgspec.json.encode(tampered))
        finally:
            await redis.aclose()

    asyncio.run(corrupt())
    code, out = cli(capsys, redis_url, "state", ROOM, "--check")
    assert code == 3
    assert out.splitlines() == ["participants: DIFFERENT at seq 4", "call-state: same at seq 4"]
    code, out = cli(capsys, redis_url, "state", ROOM, "--check", "--projection", "call-state")
    assert (code, out.strip()) == (0, "call-state: same at seq 4")
    code, out = cli(capsys, redis_url, "state", ROOM, "--projection", "participants")
    assert code == 0 and sections(out)["participants"]["counters"]["joins"] == 99
