"""The call-state machine (projection ``call-state``): a pure reducer over one room's records.

``state`` is the bot's own connection in Daily's words (``initialized``, ``joining``, ``joined``, ``leaving``,
``left``) plus ``reconnecting`` and ``failed``, which Daily lacks. ``phase`` is the call's phase as last observed
(``idle``, ``waiting``, ``active``, ``ended``). Every transition carries its cause (record tag, seq, ts, reason).
The full table and its reasons are in ``docs/callstate.md``.

A departure with no LiveKit reason (``UNKNOWN_REASON`` or empty) is *suspect*: a full reconnect of the bot reports
every remote participant gone that way before its ``reconnecting``. The identity moves from ``remote`` to
``suspect`` and the phase holds. Further departures, track, ``call_state_updated``, store and text/byte stream
records (``KEEPS_SUSPECTS``) keep it suspect; ``reconnecting`` turns it into ``pending`` (confirmed by a
``participant_connected`` or the snapshot); any other record first commits it (the phase is recomputed, if the bot
is ``joined`` or ``leaving``) and is then applied, recording at most one transition whose cause is that record.

``call_state_updated`` records are this machine's output: as input they are a no-op, so the transport can feed
its own records back. Records that do not fit the current state become anomalies (the last ``ANOMALY_LIMIT``);
``apply`` never raises. Deduplication by ``seq`` is the consumer runner's job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec
from msgspec.structs import replace

from ..records import (
    BeforeDisconnect, CallStateUpdated, Connected, Disconnected, FirstParticipantJoined,
    ParticipantConnected, ParticipantDisconnected, ParticipantLeft, Reconnected, Reconnecting, Record, SessionEnded,
    SessionStarted, tag_of,
)
from .participants_model import ANOMALY_LIMIT, KEEPS_SUSPECTS, Anomaly, is_suspect

# state (Daily-compatible, plus reconnecting and failed)
INITIALIZED: Final = "initialized"
JOINING: Final = "joining"
JOINED: Final = "joined"
LEAVING: Final = "leaving"
LEFT: Final = "left"
RECONNECTING: Final = "reconnecting"
FAILED: Final = "failed"
# phase
IDLE: Final = "idle"
WAITING: Final = "waiting"
ACTIVE: Final = "active"
ENDED: Final = "ended"
# CallState.reconnect: which kind of reconnecting
RESUME: Final = "resume"  # rtc is recovering the connection (reconnecting ... reconnected)
REJOIN: Final = "rejoin"  # the session ended; the supervisor starts a new one (session_started ... connected)

HISTORY_LIMIT: Final = 50
# session_ended(rejoin=False) reasons that mean the bot did not leave the way anyone wanted.
FAILURE_REASONS: Final = frozenset(
    {"failed", "restart_budget_exhausted", "join_failed", "pipeline_error", "connection_lost"})
# a session_started that may replace a session still live in the log without an anomaly
TAKEOVER_CAUSES: Final = frozenset({"takeover"})


class Cause(msgspec.Struct, frozen=True, gc=False):
    """Why a transition happened: the record's tag, ``seq`` and ``ts``, and a short reason."""

    event: str
    seq: int
    ts: float
    reason: str = ""


class Transition(msgspec.Struct, frozen=True, gc=False):
    from_state: str
    to_state: str
    from_phase: str
    to_phase: str
    cause: Cause


class CallCounters(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    sessions: int = 0
    state_changes: int = 0
    phase_changes: int = 0
    resumes: int = 0  # rtc reconnecting windows
    rejoins: int = 0  # session_ended(rejoin=True)
    failures: int = 0
    anomalies: int = 0


class CallState(msgspec.Struct, frozen=True, kw_only=True):
    """``remote`` lists the remote identities in the room (join order); ``suspect`` those reported gone with no
    reason, not decided yet (the phase holds); ``pending`` those not yet confirmed inside an rtc reconnect window
    (the phase holds until the window closes). An identity is in at most one of the three. ``since`` is when
    ``state`` last changed; ``cause`` is the latest transition's cause."""

    room: str
    state: str = INITIALIZED
    phase: str = IDLE
    session: str = ""
    since: float = 0.0
    cause: Cause | None = None
    reconnect: str = ""
    remote: tuple[str, ...] = ()
    suspect: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    history: tuple[Transition, ...] = ()
    counters: CallCounters = CallCounters()
    anomalies: tuple[Anomaly, ...] = ()


def _phase(remote: tuple[str, ...]) -> str:
    return ACTIVE if remote else WAITING


def _union(first: tuple[str, ...], more: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*first, *more]))


def _in_room(s: CallState) -> bool:
    """Whether the bot's connection is (or is being) established, so room events can happen."""
    return s.state in (JOINING, JOINED, LEAVING) or (s.state == RECONNECTING and s.reconnect == RESUME)


def _label(s: CallState) -> str:
    return f"{s.state}/{s.reconnect}" if s.reconnect else s.state


def _move(s: CallState, r: Record, reason: str, state: str, phase: str, *, note: str = "",
          bump: tuple[str, ...] = (), **changes: Any) -> CallState:
    """The next state: record a transition if ``state`` or ``phase`` changes, an anomaly if ``note``."""
    if state == s.state and phase == s.phase and not note and not bump:
        return replace(s, **changes) if changes else s
    counts = dict.fromkeys(bump, 1)
    if state != s.state or phase != s.phase:
        cause = Cause(tag_of(r), r.seq, r.ts, reason)
        step = Transition(s.state, state, s.phase, phase, cause)
        changes.update(state=state, phase=phase, cause=cause, history=(s.history + (step,))[-HISTORY_LIMIT:])
        if state != s.state:
            changes["since"] = r.ts
            counts["state_changes"] = 1
        if phase != s.phase:
            counts["phase_changes"] = 1
    if note:
        changes["anomalies"] = (s.anomalies + (Anomaly(r.seq, tag_of(r), note),))[-ANOMALY_LIMIT:]
        counts["anomalies"] = 1
    if counts:
        c = s.counters
        changes["counters"] = replace(c, **{k: getattr(c, k) + n for k, n in counts.items()})
    return replace(s, **changes) if changes else s


def _ignore(s: CallState, r: Record, note: str) -> CallState:
    return _move(s, r, "", s.state, s.phase, note=note)


def _settle(s: CallState, mid: CallState, nxt: CallState, r: Record) -> CallState:
    """``nxt`` (a handler's result from ``mid``, which is ``s`` with its suspects committed and its phase
    recomputed silently) with the bookkeeping of one transition ``s -> nxt`` instead of the handler's ``mid -> nxt``."""
    step = nxt.history[-1] if nxt.history is not mid.history else None
    counted_state = step is not None and step.from_state != step.to_state
    counted_phase = step is not None and step.from_phase != step.to_phase
    moved_state, moved_phase = s.state != nxt.state, s.phase != nxt.phase
    c = nxt.counters
    counters = replace(c, state_changes=c.state_changes + moved_state - counted_state,
                       phase_changes=c.phase_changes + moved_phase - counted_phase)
    if not (moved_state or moved_phase):
        return replace(nxt, counters=counters, cause=s.cause, history=s.history)
    cause = step.cause if step is not None else Cause(tag_of(r), r.seq, r.ts, "departed " + ",".join(s.suspect))
    history = (s.history + (Transition(s.state, nxt.state, s.phase, nxt.phase, cause),))[-HISTORY_LIMIT:]
    return replace(nxt, counters=counters, cause=cause, history=history)


class CallStateMachine:
    """The ``call-state`` projection."""

    name = "call-state"
    state_type = CallState

    def __init__(self) -> None:
        self._handlers: dict[type, Callable[[CallState, Any], CallState]] = {
            SessionStarted: self._session_started,
            Connected: self._connected,
            ParticipantConnected: self._arrived,
            FirstParticipantJoined: self._arrived,
            ParticipantDisconnected: self._departed,
            ParticipantLeft: self._departed,
            BeforeDisconnect: self._before_disconnect,
            Disconnected: self._disconnected,
            Reconnecting: self._reconnecting,
            Reconnected: self._reconnected,
            SessionEnded: self._session_ended,
        }  # anything else (tracks, data, text/byte streams, call_state_updated) changes nothing

    def initial(self, room: str) -> CallState:
        return CallState(room=room)

    def apply(self, state: CallState, record: Record) -> CallState:
        handler = self._handlers.get(type(record))
        if state.suspect and record.room == state.room and (
                type(record) not in KEEPS_SUSPECTS
                or (type(record) is Reconnecting and state.state not in (JOINING, JOINED, LEAVING))):
            return self._commit(state, record, handler)
        if handler is None:
            return state
        if record.room != state.room:
            return _ignore(state, record, f"record for room {record.room!r}")
        return handler(state, record)

    @staticmethod
    def _commit(s: CallState, r: Record, handler: Callable[[CallState, Any], CallState] | None) -> CallState:
        """Commit the suspect departures (they left), then apply ``r``: one transition at most, caused by ``r``."""
        phase = _phase(s.remote) if s.state in (JOINED, LEAVING) else s.phase
        mid = replace(s, suspect=(), phase=phase)
        nxt = handler(mid, r) if handler is not None else mid
        return nxt if phase == s.phase else _settle(s, mid, nxt, r)

    @staticmethod
    def _session_started(s: CallState, r: SessionStarted) -> CallState:
        expected = s.state in (INITIALIZED, LEFT, FAILED) or (s.state == RECONNECTING and s.reconnect == REJOIN)
        note = "" if expected or r.cause in TAKEOVER_CAUSES else f"session_started while {_label(s)}"
        phase = IDLE if s.phase == ENDED else s.phase
        return _move(s, r, r.cause or "join", JOINING, phase, note=note, bump=("sessions",),
                     session=r.session, reconnect="", remote=(), pending=())

    @staticmethod
    def _connected(s: CallState, r: Connected) -> CallState:
        note = "" if s.state == JOINING else f"connected while {_label(s)}"
        remote = _union(s.remote, r.participants)
        return _move(s, r, f"remote={len(remote)}", JOINED, _phase(remote), note=note,
                     session=r.session, reconnect="", remote=remote, pending=())

    @staticmethod
    def _arrived(s: CallState, r: ParticipantConnected | FirstParticipantJoined) -> CallState:
        if not _in_room(s):
            return _ignore(s, r, f"participant joined while {_label(s)}")
        pid = r.participant_id
        if pid in s.remote:
            return s
        remote = s.remote + (pid,)
        pending = tuple([p for p in s.pending if p != pid]) if pid in s.pending else s.pending
        phase = _phase(remote) if s.state in (JOINED, LEAVING) else s.phase
        return _move(s, r, pid, s.state, phase, remote=remote, pending=pending)

    @staticmethod
    def _departed(s: CallState, r: ParticipantDisconnected | ParticipantLeft) -> CallState:
        if not _in_room(s):
            return _ignore(s, r, f"participant left while {_label(s)}")
        pid = r.participant_id
        if pid in s.suspect:  # the other record of pipecat's pair: a real reason makes the departure real
            if is_suspect(r):
                return s
            suspect = tuple([p for p in s.suspect if p != pid])
            phase = _phase(s.remote + suspect) if s.state in (JOINED, LEAVING) else s.phase
            return _move(s, r, pid, s.state, phase, suspect=suspect)
        if pid not in s.remote:  # the other record of pipecat's pair, someone unconfirmed, or unknown
            return s
        remote = tuple([p for p in s.remote if p != pid])
        if s.state != RECONNECTING and is_suspect(r):  # maybe a full reconnect's: decided by the next record
            return replace(s, remote=remote, suspect=s.suspect + (pid,))
        phase = _phase(remote + s.suspect) if s.state in (JOINED, LEAVING) else s.phase
        return _move(s, r, pid, s.state, phase, remote=remote)

    @staticmethod
    def _before_disconnect(s: CallState, r: BeforeDisconnect) -> CallState:
        if not _in_room(s) or s.state == LEAVING:
            return _ignore(s, r, f"before_disconnect while {_label(s)}")
        return _move(s, r, "local", LEAVING, s.phase, reconnect="")

    @staticmethod
    def _disconnected(s: CallState, r: Disconnected) -> CallState:
        if not _in_room(s):
            return _ignore(s, r, f"disconnected while {_label(s)}")
        reason = r.reason or ("local" if r.local else "")
        return _move(s, r, reason, LEFT, s.phase, reconnect="")

    @staticmethod
    def _reconnecting(s: CallState, r: Reconnecting) -> CallState:
        if s.state not in (JOINING, JOINED, LEAVING):
            return _ignore(s, r, f"reconnecting while {_label(s)}")
        # everyone is unconfirmed until re-reported or listed by the snapshot: a full reconnect reports a
        # synthetic departure for every remote participant, a resume may hide real ones
        return _move(s, r, "", RECONNECTING, s.phase, bump=("resumes",), reconnect=RESUME, remote=(),
                     suspect=(), pending=_union(s.pending, s.remote + s.suspect))

    @staticmethod
    def _reconnected(s: CallState, r: Reconnected) -> CallState:
        if s.state != RECONNECTING or s.reconnect != RESUME:
            return _ignore(s, r, f"reconnected while {_label(s)}")
        remote = _union(s.remote, r.participants)
        return _move(s, r, f"remote={len(remote)}", JOINED, _phase(remote), reconnect="", remote=remote,
                     pending=())

    @staticmethod
    def _session_ended(s: CallState, r: SessionEnded) -> CallState:
        if s.state == INITIALIZED or s.phase == ENDED:
            return _ignore(s, r, f"session_ended while {_label(s)}/{s.phase}")
        if r.rejoin:
            if s.state == RECONNECTING and s.reconnect == REJOIN:
                return _ignore(s, r, "session_ended twice before a new session")
            return _move(s, r, r.reason, RECONNECTING, s.phase, bump=("rejoins",), reconnect=REJOIN,
                         pending=())
        failed = r.reason in FAILURE_REASONS
        return _move(s, r, r.reason, FAILED if failed else LEFT, ENDED, bump=("failures",) if failed else (),
                     reconnect="", remote=(), pending=())


CALL_STATE: Final = CallStateMachine()


def transition(prev: CallState, next_state: CallState) -> tuple[str, str] | None:
    """``(previous, current)`` when the ``state`` string changed, else None: the transport fires
    ``on_call_state_updated(transport, current)`` exactly when this is not None."""
    if prev.state == next_state.state:
        return None
    return prev.state, next_state.state


def updated_record(prev: CallState, next_state: CallState, *, ts: float, producer: str = "",
                   epoch: int = 0) -> CallStateUpdated | None:
    """The ``call_state_updated`` record describing ``prev -> next_state`` when its state or phase changed."""
    if prev.state == next_state.state and prev.phase == next_state.phase:
        return None
    cause = next_state.cause.event if next_state.cause is not None else ""
    return CallStateUpdated(room=next_state.room, session=next_state.session, ts=ts, producer=producer,
                            epoch=epoch, state=next_state.state, previous=prev.state, phase=next_state.phase,
                            cause=cause)
