"""The participants projection: scripted scenarios and properties."""

from __future__ import annotations

import itertools

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (
    BASE_TS, RoomHistory, Script, interleaved, record_sequences, valid_room_histories, valid_room_history,
)

from eventstore.projections import PARTICIPANTS, ParticipantsState, StateCodec, fold
from eventstore.projections.participants import (
    ANOMALY_LIMIT, INFERRED, LEFT_WHILE_AWAY, SESSION_END, Track, presence_seconds, seconds_present,
)
from eventstore.records import (
    AudioTrackSubscribed, AudioTrackUnsubscribed, BeforeDisconnect, CallStateUpdated, Connected, DataReceived,
    Disconnected, FirstParticipantJoined, ParticipantConnected, ParticipantDisconnected, ParticipantLeft,
    Reconnected, Reconnecting, SessionEnded, SessionStarted, VideoTrackSubscribed, VideoTrackUnsubscribed,
)

PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CODEC = StateCodec(ParticipantsState)


def run(script: Script) -> ParticipantsState:
    return fold(PARTICIPANTS, script.room, script.records)


def joined(names: list[str] | None = None) -> Script:
    """A script where the bot joined a room holding ``names``."""
    s = Script()
    s(SessionStarted, cause="join", session="s1")
    s(Connected, participants=names or [])
    return s


def leave(s: Script, who: str, reason: str = "CLIENT_INITIATED") -> None:
    s(ParticipantDisconnected, participant_id=who, reason=reason)
    s(ParticipantLeft, participant_id=who, disconnect_reason=reason)


# --- scripted scenarios --------------------------------------------------------------------------------------


def test_join_and_leave_with_real_reason() -> None:
    s = joined()
    s(ParticipantConnected, participant_id="alice", participant_sid="PA_1")
    s(FirstParticipantJoined, participant_id="alice", participant_sid="PA_1")
    state = run(s)
    assert list(state.present) == ["alice"] and state.present["alice"].sid == "PA_1"
    assert state.present["alice"].joined_at == BASE_TS + 3
    leave(s, "alice", "CLIENT_INITIATED")
    state = run(s)
    assert state.present == {} and state.left["alice"].reason == "CLIENT_INITIATED"
    assert state.left["alice"].left_at == BASE_TS + 5
    assert state.people["alice"].joins == 1 and state.people["alice"].rejoins == 0
    assert state.people["alice"].seconds == 2.0
    assert state.counters.leaves == 1 and state.anomalies == ()


def test_left_record_alone_keeps_pipecat_reason_and_later_pair_upgrades_it() -> None:
    s = joined(["alice"])
    s(ParticipantLeft, participant_id="alice")  # pipecat's literal "disconnected", no LiveKit reason
    assert run(s).left["alice"].reason == "disconnected"
    s(ParticipantDisconnected, participant_id="alice", reason="PARTICIPANT_REMOVED")
    state = run(s)
    assert state.left["alice"].reason == "PARTICIPANT_REMOVED" and state.left["alice"].seen == 3
    assert state.counters.leaves == 1 and state.anomalies == ()


def test_rejoin_counts_once_and_time_adds_up() -> None:
    s = joined()
    s(ParticipantConnected, participant_id="alice")  # t=3
    leave(s, "alice")  # t=4..5
    s(ParticipantConnected, participant_id="alice", at=10.0)
    state = run(s)
    assert state.people["alice"].rejoins == 1 and state.people["alice"].joins == 2
    assert state.counters.rejoins == 1 and "alice" not in state.left
    assert seconds_present(state, "alice", BASE_TS + 12) == 1.0 + 2.0
    assert presence_seconds(state, BASE_TS + 12) == {"alice": 3.0}


def test_two_people() -> None:
    s = joined()
    s(ParticipantConnected, participant_id="alice")
    s(ParticipantConnected, participant_id="bob")
    leave(s, "alice")
    state = run(s)
    assert list(state.present) == ["bob"] and list(state.left) == ["alice"]
    assert state.counters.joins == 2 and state.counters.peak_present == 2


def test_full_reconnect_is_not_a_leave() -> None:
    s = joined(["alice", "bob"])
    s(AudioTrackSubscribed, participant_id="alice", track_sid="TR_1")
    before = run(s)
    s(Reconnecting)
    for who in ("alice", "bob"):
        leave(s, who, "UNKNOWN")
    mid = run(s)
    assert mid.present == {} and set(mid.pending) == {"alice", "bob"}
    assert seconds_present(mid, "alice", mid.last_ts) == mid.last_ts - BASE_TS - 2  # still counting
    s(ParticipantConnected, participant_id="alice", participant_sid="PA_9")
    s(Reconnected, participants=["alice", "bob"])
    state = run(s)
    assert set(state.present) == {"alice", "bob"} and state.left == {} and state.pending == {}
    for who in ("alice", "bob"):
        assert state.present[who].joined_at == before.present[who].joined_at
        assert state.people[who].rejoins == 0 and state.people[who].joins == 1
    assert state.present["alice"].sid == "PA_9" and state.present["alice"].audio == ()
    assert state.counters.leaves == 0 and state.counters.reconnects == 1 and state.anomalies == ()


def test_full_reconnect_with_a_real_departure() -> None:
    s = joined(["alice", "bob"])
    s(Reconnecting)
    leave(s, "alice", "UNKNOWN")
    s(ParticipantDisconnected, participant_id="bob", reason="CLIENT_INITIATED")
    bob_gone_at = s.ts
    s(ParticipantConnected, participant_id="alice")
    s(Reconnected, participants=["alice"])
    state = run(s)
    assert list(state.present) == ["alice"]
    assert state.left["bob"].left_at == bob_gone_at and state.left["bob"].reason == "CLIENT_INITIATED"
    s(ParticipantConnected, participant_id="bob")  # a real return later counts
    assert run(s).people["bob"].rejoins == 1


def test_resume_with_someone_gone_unseen() -> None:
    s = joined(["alice", "bob"])
    s(Reconnecting)
    window = s.ts
    s(Reconnected, participants=["alice"])
    state = run(s)
    assert list(state.present) == ["alice"]
    assert state.left["bob"].kind == INFERRED and state.left["bob"].left_at == window
    s(ParticipantDisconnected, participant_id="bob", reason="CLIENT_INITIATED")  # late news, not an anomaly
    state = run(s)
    assert state.left["bob"].reason != "" and state.anomalies == () and state.counters.leaves == 1


def test_existing_participants_reported_after_connect_are_not_rejoins() -> None:
    s = joined(["alice"])
    s(ParticipantConnected, participant_id="alice", participant_sid="PA_1")
    state = run(s)
    assert state.people["alice"].joins == 1 and state.anomalies == () and state.present["alice"].sid == "PA_1"


def test_bot_disconnect_and_rejoin_with_someone_leaving_while_away() -> None:
    s = joined()
    s(ParticipantConnected, participant_id="alice")
    s(ParticipantConnected, participant_id="bob")
    s(Disconnected, reason="SIGNAL_CLOSE")
    away_at = s.ts
    s(SessionEnded, reason="connection_lost", rejoin=True)
    s(SessionStarted, cause="rejoin", attempt=1, session="s2")
    s(ParticipantConnected, participant_id="alice")  # reported before connected
    s(Connected, participants=["alice", "carol"])
    s(ParticipantConnected, participant_id="carol")  # reported after connected
    state = run(s)
    assert set(state.present) == {"alice", "carol"} and state.present["alice"].joined_at == BASE_TS + 3
    assert state.left["bob"].reason == LEFT_WHILE_AWAY and state.left["bob"].left_at == away_at
    assert state.people["alice"].rejoins == 0 and state.people["alice"].joins == 1
    assert state.people["carol"].joins == 1 and state.session == "s2" and state.bot == "connected"
    assert state.counters.bot_disconnects == 1 and state.counters.sessions == 2 and state.anomalies == ()


def test_takeover_without_goodbye_reconciles_from_last_record() -> None:
    s = joined(["alice", "bob"])
    last = s.ts
    s(SessionStarted, cause="takeover", session="s2", at=100.0)
    s(Connected, participants=["alice"])
    state = run(s)
    assert list(state.present) == ["alice"] and state.left["bob"].left_at == last


def test_bot_removed_by_server() -> None:
    s = joined(["alice"])
    s(Disconnected, reason="PARTICIPANT_REMOVED")
    gone = s.ts
    s(SessionEnded, reason="removed", rejoin=False)
    state = run(s)
    assert state.present == {} and state.bot == "idle"
    assert state.left["alice"].reason == "removed" and state.left["alice"].left_at == gone
    assert state.left["alice"].kind == SESSION_END
    s(SessionStarted, cause="join", session="s2")  # a later join finds alice still there: not a rejoin
    s(Connected, participants=["alice"])
    assert run(s).people["alice"].rejoins == 0


def test_room_closed_marks_everyone_left() -> None:
    s = joined(["alice", "bob"])
    s(Disconnected, reason="ROOM_DELETED")
    s(SessionEnded, reason="room_closed", rejoin=False)
    state = run(s)
    assert state.present == {} and {d.reason for d in state.left.values()} == {"room_closed"}
    assert state.counters.leaves == 2


def test_session_end_during_reconnect_keeps_provisional_reasons() -> None:
    s = joined(["alice"])
    s(Reconnecting)
    s(ParticipantDisconnected, participant_id="alice", reason="UNKNOWN")
    s(Disconnected, reason="CONNECTION_TIMEOUT")
    s(SessionEnded, reason="connection_lost", rejoin=False)
    state = run(s)
    assert state.left["alice"].reason == "UNKNOWN" and state.pending == {} and state.present == {}


def test_data_messages() -> None:
    s = joined(["alice"])
    s(DataReceived, participant_id="alice", data=b"hello")
    s(DataReceived, participant_id="alice", data=b"\x00\x01")
    s(DataReceived, participant_id=None, data=b"from server")
    state = run(s)
    assert (state.people["alice"].messages, state.people["alice"].bytes) == (2, 7)
    c = state.counters
    assert (c.data_messages, c.data_bytes, c.server_messages, c.server_bytes) == (3, 18, 1, 11)


def test_tracks_subscribe_and_unsubscribe() -> None:
    s = joined(["alice"])
    s(AudioTrackSubscribed, participant_id="alice", track_sid="TR_a")
    s(VideoTrackSubscribed, participant_id="alice", track_sid="TR_v", video_source="camera")
    s(VideoTrackSubscribed, participant_id="alice", track_sid="TR_s", video_source="screen_share")
    state = run(s)
    assert state.present["alice"].audio == (Track("TR_a"),)
    assert state.present["alice"].video == (Track("TR_v", "camera"), Track("TR_s", "screen_share"))
    s(VideoTrackUnsubscribed, participant_id="alice", track_sid="TR_v")
    s(AudioTrackUnsubscribed, participant_id="alice", track_sid="TR_a")
    state = run(s)
    assert state.present["alice"].audio == () and state.present["alice"].video == (Track("TR_s", "screen_share"),)
    assert (state.counters.tracks_subscribed, state.counters.tracks_unsubscribed) == (3, 2)
    leave(s, "alice")
    s(VideoTrackUnsubscribed, participant_id="alice", track_sid="TR_s")  # trailing: tolerated silently
    assert run(s).anomalies == ()


def test_bot_disconnect_drops_tracks() -> None:
    s = joined(["alice"])
    s(AudioTrackSubscribed, participant_id="alice", track_sid="TR_a")
    s(BeforeDisconnect)
    s(Disconnected, reason="CLIENT_INITIATED", local=True)
    assert run(s).present["alice"].audio == ()


def test_anomalies_are_recorded_and_bounded() -> None:
    s = joined(["alice"])
    s(ParticipantConnected, participant_id="alice")
    s(ParticipantConnected, participant_id="alice")  # duplicate
    s(ParticipantDisconnected, participant_id="zed")  # unknown
    s(AudioTrackSubscribed, participant_id="zed", track_sid="T")
    s(Reconnected, participants=[])
    descriptions = [a.description for a in run(s).anomalies]
    assert descriptions[0] == "duplicate connect of 'alice'"
    assert "departure of unknown participant 'zed'" in descriptions
    for _ in range(ANOMALY_LIMIT + 5):
        s(ParticipantLeft, participant_id="nobody")
    state = run(s)
    assert len(state.anomalies) == ANOMALY_LIMIT and state.anomalies[-1].seq == s.seq
    assert state.counters.anomalies == ANOMALY_LIMIT + 5 + len(descriptions)


def test_foreign_room_and_feedback_records_change_nothing_but_position() -> None:
    s = joined(["alice"])
    before = run(s)
    s(CallStateUpdated, state="joined")
    after = run(s)
    assert msgspec.structs.replace(after, last_seq=before.last_seq, last_ts=before.last_ts) == before
    other = Script("room-b")
    rec = other(ParticipantConnected, participant_id="x")
    assert PARTICIPANTS.apply(before, rec).anomalies[-1].description == "record for room 'room-b'"


# --- properties ----------------------------------------------------------------------------------------------


def fold_checked(records: list, room: str) -> ParticipantsState:
    """Fold while checking that no state, once produced, is ever changed by later steps."""
    state = PARTICIPANTS.initial(room)
    seen = [(state, CODEC.encode(state))]
    for record in records:
        state = PARTICIPANTS.apply(state, record)
        seen.append((state, CODEC.encode(state)))
    for old, encoded in seen:
        assert CODEC.encode(old) == encoded
    return state


@PROPS
@given(record_sequences("room-a"))
def test_arbitrary_records_never_raise_nor_mutate(records: list) -> None:
    fold_checked(records, "room-a")


@PROPS
@given(record_sequences("room-a"), st.data())
def test_codec_round_trip_and_chunked_fold(records: list, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(records)))
    whole = fold(PARTICIPANTS, "room-a", records)
    first = CODEC.decode(CODEC.encode(fold(PARTICIPANTS, "room-a", records[:cut])))
    assert fold(PARTICIPANTS, "room-a", records[cut:], first) == whole
    assert CODEC.decode(CODEC.encode(whole)) == whole


@PROPS
@given(valid_room_history())
def test_valid_histories_are_understood(h: RoomHistory) -> None:
    state = fold_checked(h.records, h.room)
    assert state.anomalies == ()
    assert set(state.present) == h.present and state.pending == {}
    assert {k: v.rejoins for k, v in state.people.items() if v.rejoins} == +h.rejoins
    assert {k: v.joins for k, v in state.people.items() if v.joins} == +h.joins
    assert {k: v.messages for k, v in state.people.items() if v.messages} == +h.messages
    assert {k: v.bytes for k, v in state.people.items() if v.bytes} == +h.data_bytes
    assert state.counters.joins - state.counters.leaves == len(state.present)
    if h.bot == "in":
        audio = {k: {t.track_sid for t in p.audio} for k, p in state.present.items() if p.audio}
        assert audio == {k: v for k, v in h.audio.items() if v}
        video = {k: {t.track_sid: t.source for t in p.video} for k, p in state.present.items() if p.video}
        assert video == {k: v for k, v in h.video.items() if v}
    for who, total in presence_seconds(state, state.last_ts).items():
        assert 0.0 <= total <= state.last_ts - BASE_TS, who


@settings(PROPS, max_examples=50)
@given(valid_room_histories().flatmap(lambda rooms: st.tuples(st.just(rooms), interleaved(rooms))))
def test_a_mixed_feed_folds_like_each_room(pair: tuple[dict, list]) -> None:
    by_room, feed = pair
    for room, records in by_room.items():
        assert [r.seq for r in records] == list(range(1, len(records) + 1))
        assert all(a.ts < b.ts for a, b in itertools.pairwise(records)) and {r.room for r in records} <= {room}
    states = {room: PARTICIPANTS.initial(room) for room in by_room}
    for record in feed:
        states[record.room] = PARTICIPANTS.apply(states[record.room], record)
    assert states == {room: fold(PARTICIPANTS, room, records) for room, records in by_room.items()}
    assert all(state.anomalies == () for state in states.values())
