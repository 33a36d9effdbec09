"""The participant tracker's server view (LiveKit's webhooks): a pure reducer, tolerant of order (a retried webhook
lands after later ones), kept apart from the bot's view."""

from __future__ import annotations

import itertools

from eventstore.projections.participants import ParticipantTracker
from eventstore.projections.participants_model import VISIT_LIMIT
from eventstore.projections.participants_server import unseen_by_bot
from eventstore.records import (
    LkParticipantConnectionAborted, LkParticipantJoined, LkParticipantLeft, LkRoomFinished, LkRoomStarted,
    LkTrackPublished, ParticipantConnected, SessionStarted,
)

ROOM = "room-a"
_seq = itertools.count(1)


def rec(cls, **fields):
    return cls(room=ROOM, session=fields.pop("session", ""), ts=100.0, seq=next(_seq), **fields)


def run(records):
    tracker = ParticipantTracker()
    state = tracker.initial(ROOM)
    for r in records:
        state = tracker.apply(state, r)
    return state


def joined(identity, sid, at=10.0, kind="standard", event_id=None):
    return rec(LkParticipantJoined, event_id=event_id or f"EV_j{sid}", server_ts=at, participant_id=identity,
               participant_sid=sid, kind=kind, joined_at=at, room_sid="RM_1")


def left(identity, sid, at=11.0, reason="CLIENT_INITIATED"):
    return rec(LkParticipantLeft, event_id=f"EV_l{sid}", server_ts=at, participant_id=identity, participant_sid=sid,
               kind="standard", reason=reason)


def test_a_visit_the_bot_never_saw_is_in_the_server_view_only():
    state = run([rec(LkRoomStarted, event_id="EV_s", server_ts=5.0, room_sid="RM_1"),
                 rec(SessionStarted, session="s1", identity="rs-bot-1"),
                 joined("rs-bot-1", "PA_bot", kind="agent"),
                 joined("visitor", "PA_v"), left("visitor", "PA_v"),
                 rec(LkTrackPublished, event_id="EV_t", server_ts=10.5, participant_id="visitor",
                     participant_sid="PA_v", track_sid="TR_1", track_type="audio", source="microphone"),
                 rec(LkRoomFinished, event_id="EV_f", server_ts=30.0, room_sid="RM_1")])
    view = state.server
    assert (view.room_sid, view.started_at, view.finished_at, view.events) == ("RM_1", 5.0, 30.0, 6)
    visit = view.visits["PA_v"]
    assert (visit.identity, visit.joined_at, visit.left_at, visit.reason, visit.tracks) == (
        "visitor", 10.0, 11.0, "CLIENT_INITIATED", 1)
    assert [v.identity for v in unseen_by_bot(state)] == ["visitor"]  # the bot itself is an agent
    assert state.people == {} and state.present == {} and state.counters.joins == 0  # the bot's view: untouched


def test_order_does_not_matter_and_a_leave_is_never_reopened():
    forward = run([joined("v", "PA_v"), left("v", "PA_v")]).server.visits
    backward = run([left("v", "PA_v"), joined("v", "PA_v")]).server.visits
    assert forward == backward
    again = run([joined("v", "PA_v"), left("v", "PA_v"), joined("v", "PA_v")]).server.visits
    assert again["PA_v"].left_at == 11.0


def test_aborted_connections_and_the_bot_view_side_by_side():
    state = run([rec(ParticipantConnected, session="s1", participant_id="caller", participant_sid="PA_c"),
                 joined("caller", "PA_c"),
                 rec(LkParticipantConnectionAborted, event_id="EV_a", server_ts=12.0, participant_id="flaky",
                     participant_sid="PA_f", reason="JOIN_FAILURE")])
    assert state.server.visits["PA_f"].aborted and state.server.visits["PA_f"].left_at == 12.0
    assert [v.identity for v in unseen_by_bot(state)] == ["flaky"]  # the caller the bot saw is not listed
    assert "caller" in state.present


def test_visits_are_bounded():
    state = run([joined(f"p{i}", f"PA_{i}") for i in range(VISIT_LIMIT + 5)])
    assert len(state.server.visits) == VISIT_LIMIT and state.server.dropped == 5
