"""Projections: pure reducers that rebuild per-room state from the log."""

from .base import Projection, StateCodec, fold
from .callstate import CALL_STATE, CallState, CallStateMachine, transition, updated_record
from .participants import PARTICIPANTS, ParticipantsState, ParticipantTracker, presence_seconds, seconds_present

PROJECTIONS: dict[str, Projection] = {PARTICIPANTS.name: PARTICIPANTS, CALL_STATE.name: CALL_STATE}

__all__ = [
    "CALL_STATE", "PARTICIPANTS", "PROJECTIONS", "CallState", "CallStateMachine", "ParticipantTracker",
    "ParticipantsState", "Projection", "StateCodec", "fold", "presence_seconds",
    "seconds_present", "transition", "updated_record",
]
