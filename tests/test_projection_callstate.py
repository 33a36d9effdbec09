"""The call-state machine: scripted scenarios and properties."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import RoomHistory, Script, record_sequences, valid_room_history

from eventstore.projections import CALL_STATE, CallState, StateCodec, fold, transition, updated_record
from eventstore.projections.callstate import ANOMALY_LIMIT, HISTORY_LIMIT, Cause
from eventstore.records import (
    AudioTrackSubscribed, AudioTrackUnsubscribed, BeforeDisconnect, CallStateUpdated, Connected, DataReceived,
    Disconnected, FirstParticipantJoined, ParticipantConnected, ParticipantDisconnected, ParticipantLeft,
    Reconnected, Reconnecting, Record, SessionEnded, SessionStarted,
)

PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CODEC = StateCodec(CallState)


def states(script: Script) -> list[tuple[str, str]]:
    """(state, phase) after every record, consecutive repeats collapsed."""
    state, out = CALL_STATE.initial(script.room), [("initialized", "idle")]
    for record in script.records:
        state = CALL_STATE.apply(state, record)
        if (state.state, state.phase) != out[-1]:
            out.append((state.state, state.phase))
    return out


def run(script: Script) -> CallState:
    return fold(CALL_STATE, script.room, script.records)


def joined(names: list[str] | None = None) -> Script:
    s = Script()
    s(SessionStarted, cause="join", session="s1")
    s(Connected, participants=names or [])
    return s


def leave(s: Script, who: str, reason: str = "CLIENT_INITIATED") -> None:
    s(ParticipantDisconnected, participant_id=who, reason=reason)
    s(ParticipantLeft, participant_id=who, disconnect_reason=reason)


# --- scripted scenarios --------------------------------------------------------------------------------------


def test_join_someone_comes_and_goes_bot_leaves() -> None:
    s = joined()
    s(ParticipantConnected, participant_id="alice")
    s(FirstParticipantJoined, participant_id="alice")
    leave(s, "alice")
    s(BeforeDisconnect)
    s(Disconnected, reason="CLIENT_INITIATED", local=True)
    s(SessionEnded, reason="left")
    assert states(s) == [("initialized", "idle"), ("joining", "idle"), ("joined", "waiting"),
                         ("joined", "active"), ("joined", "waiting"), ("leaving", "waiting"), ("left", "waiting"),
                         ("left", "ended")]
    state = run(s)
    assert state.anomalies == () and state.counters.state_changes == 4 and state.counters.phase_changes == 4
    assert state.cause == Cause("session_ended", s.seq, s.ts, "left")


def test_connected_with_people_already_there_is_active() -> None:
    s = joined(["alice", "bob"])
    s(ParticipantConnected, participant_id="alice")  # existing people re-reported: nothing changes
    state = run(s)
    assert (state.state, state.phase, state.remote) == ("joined", "active", ("alice", "bob"))
    assert state.history[-1].cause.event == "connected" and state.anomalies == ()


def test_two_people_phase_stays_active_until_the_last_leaves() -> None:
    s = joined(["alice"])
    s(ParticipantConnected, participant_id="bob")
    leave(s, "alice")
    assert run(s).phase == "active"
    leave(s, "bob")
    assert run(s).phase == "waiting"


def test_full_reconnect_in_the_real_order_keeps_the_phase() -> None:
    """The records exactly as measured on a real LiveKit server (rtc 1.2.1, pipecat 1.14): the synthetic
    departure, with no reason, comes before reconnecting."""
    s = Script()
    s(SessionStarted, cause="join", session="s1")
    s(CallStateUpdated, state="joining", previous="initialized", phase="idle", cause="session_started")
    s(Connected, participants=[])
    s(CallStateUpdated, state="joined", previous="joining", phase="waiting", cause="connected")
    s(ParticipantConnected, participant_id="alice", participant_sid="PA_1", kind="standard")  # 5
    s(FirstParticipantJoined, participant_id="alice", participant_sid="PA_1")
    s(AudioTrackSubscribed, participant_id="alice", participant_sid="PA_1", track_sid="TR_A")
    s(ParticipantDisconnected, participant_id="alice", participant_sid="PA_1", reason="UNKNOWN_REASON")  # 8
    s(ParticipantLeft, participant_id="alice", participant_sid="PA_1", disconnect_reason="UNKNOWN_REASON")
    s(Reconnecting)  # 10
    s(CallStateUpdated, state="reconnecting", previous="joined", phase="active", cause="reconnecting")
    s(AudioTrackUnsubscribed, participant_id="alice", participant_sid="PA_1", track_sid="TR_A")
    s(ParticipantConnected, participant_id="alice", participant_sid="PA_2", kind="standard")  # 13
    s(FirstParticipantJoined, participant_id="alice", participant_sid="PA_2")
    s(AudioTrackSubscribed, participant_id="alice", participant_sid="PA_2", track_sid="TR_A")
    s(Reconnected, participants=["alice"])  # 16
    assert states(s) == [("initialized", "idle"), ("joining", "idle"), ("joined", "waiting"), ("joined", "active"),
                         ("reconnecting", "active"), ("joined", "active")]
    after_departures = fold(CALL_STATE, s.room, s.records[:9])
    assert (after_departures.remote, after_departures.suspect, after_departures.phase) == ((), ("alice",), "active")
    after_reconnecting = fold(CALL_STATE, s.room, s.records[:10])
    assert (after_reconnecting.suspect, after_reconnecting.pending) == ((), ("alice",))
    state = run(s)
    assert (state.remote, state.suspect, state.pending) == (("alice",), (), ())
    assert state.counters.phase_changes == 2 and state.counters.resumes == 1 and state.anomalies == ()


def test_resume_in_the_real_order() -> None:
    s = joined(["alice"])
    s(Reconnecting)
    s(CallStateUpdated, state="reconnecting", previous="joined", phase="active", cause="reconnecting")
    s(Reconnected, participants=["alice"])
    assert states(s)[2:] == [("joined", "active"), ("reconnecting", "active"), ("joined", "active")]
    state = run(s)
    assert state.remote == ("alice",) and state.suspect == () and state.pending == () and state.anomalies == ()


def test_a_leave_with_no_reason_moves_the_phase_at_the_next_record() -> None:
    s = joined(["alice"])
    s(ParticipantDisconnected, participant_id="alice", reason="UNKNOWN_REASON")
    s(CallStateUpdated, state="joined", phase="active")  # none of these decide it
    s(ParticipantLeft, participant_id="alice", disconnect_reason="UNKNOWN_REASON")
    held = run(s)
    assert (held.phase, held.remote, held.suspect) == ("active", (), ("alice",))
    s(DataReceived, data=b"x")
    state = run(s)
    assert (state.state, state.phase, state.suspect) == ("joined", "waiting", ())
    assert state.cause == Cause("data_received", s.seq, s.ts, "departed alice")
    assert state.history[-1].from_phase == "active" and state.counters.phase_changes == held.counters.phase_changes + 1


def test_a_committed_suspect_and_the_next_record_make_one_transition() -> None:
    s = joined(["alice"])
    s(ParticipantDisconnected, participant_id="alice", reason="")
    before = run(s)
    s(BeforeDisconnect)
    state = run(s)
    assert [(t.from_state, t.from_phase, t.to_state, t.to_phase) for t in state.history[len(before.history):]] == [
        ("joined", "active", "leaving", "waiting")]
    assert state.cause == Cause("before_disconnect", s.seq, s.ts, "local")
    assert (state.counters.state_changes, state.counters.phase_changes) == (
        before.counters.state_changes + 1, before.counters.phase_changes + 1)


def test_someone_arriving_after_a_suspect_departure_keeps_the_call_active_without_a_transition() -> None:
    s = joined(["alice"])
    s(ParticipantDisconnected, participant_id="alice", reason="UNKNOWN_REASON")
    before = run(s)
    s(ParticipantConnected, participant_id="bob")
    state = run(s)
    assert (state.phase, state.remote, state.suspect) == ("active", ("bob",), ())
    assert state.history == before.history and state.counters == before.counters and state.cause == before.cause


def test_a_real_reason_on_the_other_record_of_the_pair_decides_at_once() -> None:
    s = joined(["alice", "bob"])
    s(ParticipantDisconnected, participant_id="alice", reason="UNKNOWN_REASON")
    s(ParticipantDisconnected, participant_id="bob", reason="UNKNOWN_REASON")
    s(ParticipantLeft, participant_id="bob", disconnect_reason="CLIENT_INITIATED")
    assert (run(s).phase, run(s).suspect) == ("active", ("alice",))  # alice still holds the phase
    s(ParticipantLeft, participant_id="alice", disconnect_reason="PARTICIPANT_REMOVED")
    state = run(s)
    assert (state.phase, state.suspect, state.remote) == ("waiting", (), ())
    assert state.cause == Cause("participant_left", s.seq, s.ts, "alice")


def test_departures_inside_the_reconnect_window_keep_the_phase_too() -> None:
    """Not the order rtc 1.2.1 reports, but the same outcome."""
    s = joined(["alice", "bob"])
    s(Reconnecting)
    for who in ("alice", "bob"):
        leave(s, who, "UNKNOWN")
    s(ParticipantConnected, participant_id="alice")
    s(Reconnected, participants=["alice", "bob"])
    assert states(s)[2:] == [("joined", "active"), ("reconnecting", "active"), ("joined", "active")]
    state = run(s)
    assert set(state.remote) == {"alice", "bob"} and state.pending == () and state.counters.resumes == 1
    assert state.anomalies == ()


def test_resume_where_everyone_left_unseen_goes_waiting() -> None:
    s = joined(["alice"])
    s(Reconnecting)
    s(Reconnected, participants=[])
    assert run(s).phase == "waiting" and run(s).state == "joined"


def test_bot_removed_by_server() -> None:
    s = joined(["alice"])
    s(Disconnected, reason="PARTICIPANT_REMOVED")
    s(SessionEnded, reason="removed", rejoin=False)
    assert states(s)[-2:] == [("left", "active"), ("left", "ended")]
    assert run(s).history[-2].cause.reason == "PARTICIPANT_REMOVED"


def test_room_closed() -> None:
    s = joined(["alice"])
    s(Disconnected, reason="ROOM_DELETED")
    s(SessionEnded, reason="room_closed")
    state = run(s)
    assert (state.state, state.phase, state.remote) == ("left", "ended", ())


def test_bot_disconnect_and_rejoin_with_someone_leaving_while_away() -> None:
    s = joined(["alice", "bob"])
    s(Disconnected, reason="SIGNAL_CLOSE")
    s(SessionEnded, reason="connection_lost", rejoin=True)
    s(SessionStarted, cause="rejoin", attempt=1, session="s2")
    s(ParticipantConnected, participant_id="alice")
    s(Connected, participants=["alice"])
    assert states(s)[2:] == [("joined", "active"), ("left", "active"), ("reconnecting", "active"),
                             ("joining", "active"), ("joined", "active")]
    state = run(s)
    assert state.remote == ("alice",) and state.session == "s2" and state.counters.rejoins == 1
    leave(s, "alice")
    assert run(s).phase == "waiting" and run(s).anomalies == ()


def test_restart_budget_exhausted_fails() -> None:
    s = joined()
    s(Disconnected, reason="SIGNAL_CLOSE")
    s(SessionEnded, reason="connection_lost", rejoin=True)
    s(SessionStarted, cause="rejoin", attempt=1, session="s2")
    s(SessionEnded, reason="restart_budget_exhausted", rejoin=False)
    state = run(s)
    assert (state.state, state.phase, state.counters.failures) == ("failed", "ended", 1)
    s(SessionStarted, cause="join", session="s3")  # a later join starts a new call
    assert states(s)[-1] == ("joining", "idle") and run(s).anomalies == ()


def test_transition_helper_and_updated_record() -> None:
    s = joined()
    a = fold(CALL_STATE, s.room, s.records[:1])
    b = CALL_STATE.apply(a, s.records[1])
    assert transition(a, b) == ("joining", "joined") and transition(b, b) is None
    rec = updated_record(a, b, ts=123.0, producer="d1", epoch=4)
    assert rec is not None and (rec.state, rec.previous, rec.phase, rec.cause) == ("joined", "joining", "waiting",
                                                                                     "connected")
    assert (rec.room, rec.session, rec.epoch) == ("room-a", "s1", 4) and updated_record(b, b, ts=1.0) is None
    c = CALL_STATE.apply(b, Script().__call__(ParticipantConnected, participant_id="x"))
    assert transition(b, c) is None and updated_record(b, c, ts=1.0) is not None  # phase-only change


def test_feedback_and_media_records_are_no_ops() -> None:
    s = joined(["alice"])
    state = run(s)
    for record in (CallStateUpdated(room="room-a", session="s1", ts=1.0, state="left"),
                   DataReceived(room="room-a", session="s1", ts=1.0, data=b"x"),
                   AudioTrackSubscribed(room="room-a", session="s1", ts=1.0, participant_id="alice")):
        assert CALL_STATE.apply(state, record) is state


def test_events_that_do_not_fit_are_anomalies() -> None:
    s = Script()
    s(Connected, participants=[])  # no session_started: followed, but noted
    s(Reconnected, participants=[])  # not reconnecting: ignored
    s(BeforeDisconnect)
    s(Disconnected)
    s(Disconnected)  # twice
    s(ParticipantConnected, participant_id="alice")  # bot not in the room
    s(SessionEnded, reason="left")
    s(SessionEnded, reason="left")  # after the end
    state = run(s)
    assert [a.seq for a in state.anomalies] == [1, 2, 5, 6, 8]
    assert (state.state, state.phase) == ("left", "ended")
    for _ in range(ANOMALY_LIMIT):
        s(Reconnecting)
    assert len(run(s).anomalies) == ANOMALY_LIMIT and run(s).counters.anomalies == ANOMALY_LIMIT + 5


def test_takeover_replaces_a_live_session_without_anomaly() -> None:
    s = joined(["alice"])
    s(SessionStarted, cause="takeover", session="s2")
    s(Connected, participants=["alice"])
    assert run(s).anomalies == () and states(s)[-2:] == [("joining", "active"), ("joined", "active")]
    s(SessionStarted, cause="join", session="s3")
    assert run(s).anomalies[-1].description == "session_started while joined"


def test_history_is_bounded() -> None:
    s = joined()
    for i in range(HISTORY_LIMIT):
        s(ParticipantConnected, participant_id=f"p{i}")
        leave(s, f"p{i}")
    state = run(s)
    assert len(state.history) == HISTORY_LIMIT and state.history[-1].cause.seq == s.seq - 1


# --- properties ----------------------------------------------------------------------------------------------


def fold_checked(records: list[Record], room: str) -> CallState:
    state = CALL_STATE.initial(room)
    seen = [(state, CODEC.encode(state))]
    for record in records:
        state = CALL_STATE.apply(state, record)
        seen.append((state, CODEC.encode(state)))
        where = [*state.remote, *state.suspect, *state.pending]  # each identity in one place at most
        assert len(where) == len(set(where))
    for old, encoded in seen:
        assert CODEC.encode(old) == encoded
    return state


@PROPS
@given(record_sequences("room-a"))
def test_arbitrary_records_never_raise_nor_mutate(records: list[Record]) -> None:
    state = fold_checked(records, "room-a")
    assert state.state in {"initialized", "joining", "joined", "leaving", "left", "reconnecting", "failed"}
    assert state.phase in {"idle", "waiting", "active", "ended"}


@PROPS
@given(record_sequences("room-a"), st.data())
def test_codec_round_trip_and_chunked_fold(records: list[Record], data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(records)))
    whole = fold(CALL_STATE, "room-a", records)
    first = CODEC.decode(CODEC.encode(fold(CALL_STATE, "room-a", records[:cut])))
    assert fold(CALL_STATE, "room-a", records[cut:], first) == whole
    assert CODEC.decode(CODEC.encode(whole)) == whole


@PROPS
@given(record_sequences("room-a"))
def test_every_transition_is_explained(records: list[Record]) -> None:
    state = CALL_STATE.initial("room-a")
    for record in records:
        nxt = CALL_STATE.apply(state, record)
        if (nxt.state, nxt.phase) != (state.state, state.phase):
            step = nxt.history[-1]
            assert (step.from_state, step.from_phase, step.to_state, step.to_phase) == (
                state.state, state.phase, nxt.state, nxt.phase)
            assert step.cause.seq == record.seq and nxt.cause == step.cause
        state = nxt


@PROPS
@given(valid_room_history())
def test_valid_histories_are_understood(h: RoomHistory) -> None:
    state = fold_checked(h.records, h.room)
    assert state.anomalies == ()
    assert (state.state, state.phase) == (h.state, h.phase)
    if h.bot == "in":
        assert set(state.remote) == set(h.world) and set(state.suspect) == h.suspect
    # feeding the machine's own output back changes nothing
    with_feedback: list[Record] = []
    prev = CALL_STATE.initial(h.room)
    for record in h.records:
        with_feedback.append(record)
        nxt = CALL_STATE.apply(prev, record)
        out = updated_record(prev, nxt, ts=record.ts)
        if out is not None:
            with_feedback.append(out)
        prev = nxt
    assert fold(CALL_STATE, h.room, with_feedback) == state
