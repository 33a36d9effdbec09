"""The participants projection: scripted scenarios and properties."""

from __future__ import annotations

import itertools
from collections import Counter

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (
    BASE_TS, RoomHistory, Script, interleaved, record_sequences, valid_room_histories, valid_room_history,
)

from eventstore.projections import PARTICIPANTS, ParticipantsState, StateCodec, fold
from eventstore.projections.participants import (
    ANOMALY_LIMIT, INFERRED, LEFT_WHILE_AWAY, OBSERVED, SESSION_END, Track, presence_seconds, seconds_present,
)
from eventstore.records import (
    AudioTrackSubscribed, AudioTrackUnsubscribed, BeforeDisconnect, ByteStreamReceived, CallStateUpdated, Connected,
    DataReceived, Disconnected, FirstParticipantJoined, ParticipantConnected, ParticipantDisconnected,
    ParticipantLeft, Reconnected, Reconnecting, SessionEnded, SessionStarted, TextStreamReceived,
    VideoTrackSubscribed, VideoTrackUnsubscribed,
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
    s(ParticipantLeft, participant_id="alice")  # pipecat's literal "disconnected", no LiveKit reason: suspect
    gone_at = s.ts
    state = run(s)
    assert "alice" not in state.left and state.suspect["alice"].reason == "disconnected"
    s(ParticipantDisconnected, participant_id="alice", reason="PARTICIPANT_REMOVED")  # a real reason: real
    state = run(s)
    assert state.left["alice"].reason == "PARTICIPANT_REMOVED" and state.left["alice"].seen == 3
    assert state.left["alice"].left_at == gone_at and state.suspect == {}
    assert state.counters.leaves == 1 and state.anomalies == ()


def test_left_record_alone_is_committed_by_the_next_record() -> None:
    s = joined(["alice"])
    s(ParticipantLeft, participant_id="alice")
    gone_at = s.ts
    s(DataReceived, participant_id=None, data=b"x")
    state = run(s)
    assert state.suspect == {} and state.left["alice"].reason == "disconnected"
    assert state.left["alice"].left_at == gone_at and state.counters.leaves == 1


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


def real_full_reconnect(resubscribe_before_reconnected: bool) -> Script:
    """The records of a full reconnect of the bot exactly as measured on a real LiveKit server (rtc 1.2.1,
    pipecat 1.14): the synthetic departure comes *before* ``reconnecting`` and gives no reason."""
    s = Script()
    s(SessionStarted, cause="join", session="s1")  # 1
    s(CallStateUpdated, state="joining", previous="initialized", phase="idle", cause="session_started")
    s(Connected, participants=[])  # 3
    s(CallStateUpdated, state="joined", previous="joining", phase="waiting", cause="connected")
    s(ParticipantConnected, participant_id="alice", participant_sid="PA_1", kind="standard")  # 5
    s(FirstParticipantJoined, participant_id="alice", participant_sid="PA_1")
    s(AudioTrackSubscribed, participant_id="alice", participant_sid="PA_1", track_sid="TR_A")  # 7
    s(ParticipantDisconnected, participant_id="alice", participant_sid="PA_1", reason="UNKNOWN_REASON")
    s(ParticipantLeft, participant_id="alice", participant_sid="PA_1", disconnect_reason="UNKNOWN_REASON")  # 9
    s(Reconnecting)
    s(CallStateUpdated, state="reconnecting", previous="joined", phase="active", cause="reconnecting")  # 11
    s(AudioTrackUnsubscribed, participant_id="alice", participant_sid="PA_1", track_sid="TR_A")
    s(ParticipantConnected, participant_id="alice", participant_sid="PA_2", kind="standard")  # 13
    s(FirstParticipantJoined, participant_id="alice", participant_sid="PA_2")
    if resubscribe_before_reconnected:
        s(AudioTrackSubscribed, participant_id="alice", participant_sid="PA_2", track_sid="TR_A")  # 15
        s(Reconnected, participants=["alice"])  # 16
    else:
        s(Reconnected, participants=["alice"])  # 15
        s(AudioTrackSubscribed, participant_id="alice", participant_sid="PA_2", track_sid="TR_A")  # 16
    return s


@pytest.mark.parametrize("resubscribe_before_reconnected", [True, False])
def test_full_reconnect_in_the_real_order_is_not_a_leave(resubscribe_before_reconnected: bool) -> None:
    s = real_full_reconnect(resubscribe_before_reconnected)
    states = [fold(PARTICIPANTS, s.room, s.records[:n]) for n in range(len(s.records) + 1)]
    for n in (8, 9):  # departed with no reason: suspect, neither present nor left, presence still counting
        mid = states[n]
        assert mid.present == {} and mid.left == {} and list(mid.suspect) == ["alice"] and mid.pending == {}
        assert mid.suspect["alice"].at == s.records[7].ts and mid.suspect["alice"].reason == "UNKNOWN_REASON"
        assert mid.counters.leaves == 0 and seconds_present(mid, "alice", mid.last_ts) == mid.last_ts - BASE_TS - 5
    assert states[9].suspect["alice"].seen == 3  # the pair, counted once
    for n in (10, 11, 12):  # reconnecting: the suspect is the window's provisional departure
        assert states[n].suspect == {} and list(states[n].pending) == ["alice"] and states[n].left == {}
    assert states[13].present["alice"].joined_at == BASE_TS + 5 and states[13].pending == {}
    state = states[-1]
    assert list(state.present) == ["alice"] and state.left == {} and state.suspect == {} and state.pending == {}
    alice = state.present["alice"]
    assert (alice.joined_at, alice.sid, alice.audio) == (BASE_TS + 5, "PA_2", (Track("TR_A"),))
    assert (state.people["alice"].joins, state.people["alice"].rejoins) == (1, 0)
    assert (state.counters.joins, state.counters.leaves, state.counters.rejoins) == (1, 0, 0)
    assert state.counters.reconnects == 1 and state.anomalies == () and state.bot == "connected"


def test_resume_in_the_real_order_changes_nothing() -> None:
    s = joined(["alice"])
    s(AudioTrackSubscribed, participant_id="alice", track_sid="TR_A")
    before = run(s)
    s(Reconnecting)
    s(CallStateUpdated, state="reconnecting", previous="joined", phase="active", cause="reconnecting")
    s(Reconnected, participants=["alice"])
    s(CallStateUpdated, state="joined", previous="reconnecting", phase="active", cause="reconnected")
    state = run(s)
    assert state.present == before.present and state.left == {} and state.suspect == {} and state.pending == {}
    assert state.counters.reconnects == 1 and state.counters.leaves == 0 and state.anomalies == ()


def test_full_reconnect_with_someone_really_gone_in_the_real_order() -> None:
    s = joined(["alice", "bob"])
    for who in ("alice", "bob"):
        s(ParticipantDisconnected, participant_id=who, reason="UNKNOWN_REASON")
    bob_gone_at = s.ts
    for who in ("alice", "bob"):
        s(ParticipantLeft, participant_id=who, disconnect_reason="UNKNOWN_REASON")
    s(Reconnecting)
    s(ParticipantConnected, participant_id="alice")
    s(Reconnected, participants=["alice"])  # bob left during the reconnect
    state = run(s)
    assert list(state.present) == ["alice"] and state.present["alice"].joined_at == BASE_TS + 2
    assert state.left["bob"].left_at == bob_gone_at and state.left["bob"].reason == "UNKNOWN_REASON"
    assert state.counters.leaves == 1 and state.counters.rejoins == 0 and state.anomalies == ()


@pytest.mark.parametrize("next_record", [
    "data", "bob_connects", "alice_returns", "track", "before_disconnect", "disconnected", "session_ended",
    "session_started"])
def test_a_leave_with_no_reason_not_followed_by_reconnecting_counts_at_its_own_time(next_record: str) -> None:
    s = joined(["alice"])
    s(AudioTrackSubscribed, participant_id="alice", track_sid="TR_A")
    s(ParticipantDisconnected, participant_id="alice", reason="UNKNOWN_REASON")
    gone_at = s.ts
    s(CallStateUpdated, state="joined", phase="active")  # none of these decide it
    s(AudioTrackUnsubscribed, participant_id="alice", track_sid="TR_A")
    s(ParticipantLeft, participant_id="alice", disconnect_reason="UNKNOWN_REASON")
    assert "alice" in run(s).suspect
    {
        "data": lambda: s(DataReceived, participant_id=None, data=b"x"),
        "bob_connects": lambda: s(ParticipantConnected, participant_id="bob"),
        "alice_returns": lambda: s(ParticipantConnected, participant_id="alice"),
        "track": lambda: s(VideoTrackSubscribed, participant_id="alice", track_sid="TR_V"),
        "before_disconnect": lambda: s(BeforeDisconnect),
        "disconnected": lambda: s(Disconnected, reason="CLIENT_INITIATED", local=True),
        "session_ended": lambda: s(SessionEnded, reason="left"),
        "session_started": lambda: s(SessionStarted, cause="takeover", session="s2"),
    }[next_record]()
    state = run(s)
    assert state.suspect == {} and state.counters.leaves == 1
    if next_record == "alice_returns":
        assert state.people["alice"].rejoins == 1 and state.present["alice"].joined_at == s.ts
        assert state.people["alice"].seconds == gone_at - (BASE_TS + 2)
        return
    gone = state.left["alice"]
    assert (gone.left_at, gone.reason, gone.kind, gone.seen) == (gone_at, "UNKNOWN_REASON", OBSERVED, 3)
    assert state.people["alice"].seconds == gone_at - (BASE_TS + 2) and "alice" not in state.present


def test_a_real_reason_on_the_other_record_of_the_pair_makes_it_real_at_once() -> None:
    s = joined(["alice", "bob"])
    s(ParticipantDisconnected, participant_id="bob", reason="UNKNOWN_REASON")
    s(ParticipantDisconnected, participant_id="alice", reason="UNKNOWN_REASON")
    alice_gone_at = s.ts
    s(ParticipantLeft, participant_id="alice", disconnect_reason="CLIENT_INITIATED")
    state = run(s)
    assert list(state.suspect) == ["bob"] and state.left["alice"].reason == "CLIENT_INITIATED"
    assert state.left["alice"].left_at == alice_gone_at and state.left["alice"].seen == 3
    s(Reconnecting)  # bob's was a full reconnect's after all
    s(Reconnected, participants=["alice", "bob"])  # alice came back during it: a new presence
    state = run(s)
    assert state.present["bob"].joined_at == BASE_TS + 2 and state.people["bob"].rejoins == 0
    assert state.people["alice"].rejoins == 1 and state.counters.leaves == 1


def test_departures_inside_the_reconnect_window_are_provisional_too() -> None:
    """Not the order rtc 1.2.1 reports, but the same outcome: departures after reconnecting are provisional."""
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


def test_text_and_byte_streams_are_counted_for_their_sender_and_the_room() -> None:
    s = joined(["alice"])
    s(TextStreamReceived, participant_id="alice", topic="lk.chat", text="hi ü", size=5)
    s(TextStreamReceived, participant_id="alice", topic="lk.chat", text="x" * 4, size=9_000_000, truncated=True)
    s(ByteStreamReceived, participant_id="alice", name="a.png", data=b"\x89PNG", size=4)
    s(ByteStreamReceived, participant_id="bob", data=b"\x00", size=1, complete=False, error="the bot left")
    s(TextStreamReceived, participant_id=None, text="?", size=1)
    state = run(s)
    alice, bob = state.people["alice"], state.people["bob"]
    assert (alice.text_streams, alice.text_bytes, alice.byte_streams, alice.byte_stream_bytes) == (2, 9_000_005, 1, 4)
    assert (alice.messages, alice.bytes) == (0, 0)  # data packets are counted apart
    assert (bob.byte_streams, bob.byte_stream_bytes, bob.joins) == (1, 1, 0)  # a sender never seen joining counts
    c = state.counters
    assert (c.text_streams, c.text_bytes, c.byte_streams, c.byte_stream_bytes) == (3, 9_000_006, 2, 5)
    assert (c.incomplete_streams, c.data_messages, c.server_messages, c.anomalies) == (1, 0, 0, 0)
    assert state.last_seq == s.seq and "bob" not in state.present


@pytest.mark.parametrize("cls", [TextStreamReceived, ByteStreamReceived])
def test_a_stream_record_leaves_a_suspect_departure_undecided(cls) -> None:
    # written when the stream ends, by a task of its own: its place in the log says nothing about who is in
    s = joined(["alice", "bob"])
    leave(s, "alice", reason="UNKNOWN_REASON")
    s(cls, participant_id="bob", size=3)
    assert set(run(s).suspect) == {"alice"}
    s(Reconnecting)
    state = run(s)
    assert set(state.pending) == {"alice"} and "alice" not in state.left


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
    """Fold while checking that no state, once produced, is ever changed by later steps, and that every state
    places each identity in at most one of present / suspect / pending / left, and counts consistently."""
    state = PARTICIPANTS.initial(room)
    seen = [(state, CODEC.encode(state))]
    for record in records:
        state = PARTICIPANTS.apply(state, record)
        seen.append((state, CODEC.encode(state)))
        where = [*state.present, *state.suspect, *state.pending, *state.left]
        assert len(where) == len(set(where))
        c = state.counters
        assert c.joins - c.leaves == len(state.present) + len(state.suspect) + len(state.pending)
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
    assert set(state.present) == h.present and set(state.suspect) == h.suspect and set(state.pending) == h.pending
    assert {k: v.rejoins for k, v in state.people.items() if v.rejoins} == +h.rejoins
    assert {k: v.joins for k, v in state.people.items() if v.joins} == +h.joins
    assert {k: v.messages for k, v in state.people.items() if v.messages} == +h.messages
    assert {k: v.bytes for k, v in state.people.items() if v.bytes} == +h.data_bytes
    streams = {k: +Counter({n: getattr(v, n) for n in ("text_streams", "text_bytes", "byte_streams",
                                                          "byte_stream_bytes")}) for k, v in state.people.items()}
    assert {k: v for k, v in streams.items() if v} == {k: +v for k, v in h.streams.items() if +v}
    assert state.counters.joins - state.counters.leaves == len(state.present) + len(state.suspect) + len(h.pending)
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
