"""Who is in a room (projection ``participants``): a pure reducer over one room's records.

Presence survives the bot's own trouble (rules and reasons: ``docs/callstate.md``, "Participants"):

- A departure (``participant_disconnected`` / ``participant_left``) that gives no LiveKit reason (``UNKNOWN_REASON``
  or empty, ``SUSPECT_REASONS``) is *suspect*: a full reconnect of the bot reports every remote participant gone
  that way *before* its ``reconnecting``. The person moves from ``present`` to ``suspect`` (neither present nor
  left, presence still counting). Further departures, unsubscribes, ``call_state_updated``, the store notes and
  text/byte streams (``KEEPS_SUSPECTS``) keep them suspect; ``reconnecting`` makes them the window's provisional
  departures (``pending``, below); any other record first commits them as real departures, at their own time and
  reason, and is then applied. A suspect whose other pipecat record names a real reason left for real at once.
- A *window* opens when the bot loses its view of the room (rtc ``reconnecting``, its ``disconnected``,
  ``session_ended(rejoin=True)``, a ``session_started`` the previous session never closed). Inside a
  ``reconnecting`` window departures are provisional (``pending``) too.
- A ``participant_connected`` for a pending person, or the next snapshot (``connected`` / ``reconnected``
  ``participants``), keeps their presence (same ``joined_at``, no rejoin). The snapshot closes the window: pending
  people not in it left when their departure said; present people neither in it nor re-reported since the window
  opened left at its start (``left_while_bot_away`` ...).
- ``session_ended(rejoin=False)`` marks everyone left with its reason. Joining again after a departure counts a
  rejoin, unless that departure was only the bot's session ending.
- pipecat reports one departure twice (``participant_disconnected``, ``participant_left``): the second completes
  the first. Records that do not fit become anomalies (the last ``ANOMALY_LIMIT``); ``apply`` never raises.
  A record for another room is only an anomaly: it decides nothing.

Deduplication by ``seq`` is the consumer runner's job; this reducer applies what it is given. The state types
live in :mod:`.participants_model` and are re-exported here; the steps the handlers build a next state with
(anomalies, departures, copy-on-write drafts) are in :mod:`.participants_edit`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from msgspec.structs import replace

from ..records import (
    SERVER_RECORD_TYPES, AudioTrackSubscribed, AudioTrackUnsubscribed, BeforeDisconnect, ByteStreamReceived,
    CallStateUpdated, Connected, DataReceived, Disconnected, FirstParticipantJoined, ParticipantConnected,
    ParticipantDisconnected, ParticipantLeft, Reconnected, Reconnecting, Record, SessionEnded, SessionStarted,
    TextStreamReceived, VideoTrackSubscribed, VideoTrackUnsubscribed, tag_of,
)
from .participants_server import apply_server
from .participants_edit import _NO_STATS, _closed, _commit, _departure, _Draft, _is_rejoin, _note, _touch
from .participants_model import (
    ABSENT_FROM_SNAPSHOT, ANOMALY_LIMIT, INFERRED, KEEPS_SUSPECTS, LEFT_WHILE_AWAY, LEFT_WHILE_RECONNECTING,
    OBSERVED, SEEN_DISCONNECTED, SEEN_LEFT, SESSION_END, SUSPECT_REASONS, Anomaly, Departure, Pending, PersonStats,
    Present, ParticipantsState, RoomCounters, Track, is_suspect, livekit_reason,
)

__all__ = [
    "ABSENT_FROM_SNAPSHOT", "ANOMALY_LIMIT", "INFERRED", "LEFT_WHILE_AWAY", "LEFT_WHILE_RECONNECTING", "OBSERVED",
    "PARTICIPANTS", "SEEN_DISCONNECTED", "SEEN_LEFT", "SESSION_END", "SUSPECT_REASONS", "Anomaly", "Departure",
    "ParticipantTracker", "ParticipantsState", "Pending", "PersonStats", "Present", "RoomCounters", "Track",
    "is_suspect", "livekit_reason", "presence_seconds", "seconds_present",
]

_TRACK_RECORDS: Final = {AudioTrackSubscribed: ("audio", True), AudioTrackUnsubscribed: ("audio", False),
                         VideoTrackSubscribed: ("video", True), VideoTrackUnsubscribed: ("video", False)}
# stream record -> (its count field, its size field): the same names in PersonStats and RoomCounters
_STREAM_RECORDS: Final = {TextStreamReceived: ("text_streams", "text_bytes"),
                          ByteStreamReceived: ("byte_streams", "byte_stream_bytes")}


_RANK: Final = {"": 0, "disconnected": 1, "UNKNOWN_REASON": 2}  # anything else is a real reason
_CAN_RECONNECT: Final = ("connected", "joining")


def _better(old: str, new: str) -> str:
    """Keep the more telling reason: a real one over LiveKit's ``UNKNOWN_REASON``, over pipecat's placeholder
    ``disconnected``, over nothing."""
    return new if _RANK.get(new, 3) > _RANK.get(old, 3) else old


def _since(state: ParticipantsState, record: Record) -> float:
    """When the current window opened, or ``record``'s time if none is open."""
    return record.ts if state.window_ts is None else state.window_ts


class ParticipantTracker:
    """The ``participants`` projection: presence, departures, rejoins, data, streams and tracks per identity."""

    name = "participants"
    state_type = ParticipantsState

    def __init__(self) -> None:
        self._handlers: dict[type, Callable[[ParticipantsState, Any], ParticipantsState]] = {
            DataReceived: self._data,
            **dict.fromkeys(_STREAM_RECORDS, self._stream),
            **dict.fromkeys(_TRACK_RECORDS, self._track),
            ParticipantConnected: self._arrived,
            ParticipantDisconnected: lambda s, r: self._gone(s, r, r.participant_id, r.reason, SEEN_DISCONNECTED),
            ParticipantLeft: lambda s, r: self._gone(s, r, r.participant_id, r.disconnect_reason or r.reason,
                                                     SEEN_LEFT),
            SessionStarted: self._session_started,
            Connected: self._snapshot,
            Reconnecting: self._reconnecting,
            Reconnected: self._snapshot,
            Disconnected: self._disconnected,
            SessionEnded: self._session_ended,
            FirstParticipantJoined: _touch,  # participant_connected carries the presence
            BeforeDisconnect: _touch,
            CallStateUpdated: _touch,
            **dict.fromkeys(SERVER_RECORD_TYPES, apply_server),
        }

    def initial(self, room: str) -> ParticipantsState:
        return ParticipantsState(room=room)

    def apply(self, state: ParticipantsState, record: Record) -> ParticipantsState:
        handler = self._handlers.get(type(record))
        if handler is None:
            return state
        if record.room != state.room:
            return _note(state, record, f"record for room {record.room!r}")
        if state.suspect and (type(record) not in KEEPS_SUSPECTS
                              or (type(record) is Reconnecting and state.bot not in _CAN_RECONNECT)):
            state = _commit(state, state.suspect)
        return handler(state, record)

    # hot paths (data, tracks, first joins, plain departures): shallow dict copies, one changed entry
    @staticmethod
    def _data(s: ParticipantsState, r: DataReceived) -> ParticipantsState:
        size = len(r.data)
        c = s.counters
        pid = r.participant_id
        if pid is None:
            counters = replace(c, data_messages=c.data_messages + 1, data_bytes=c.data_bytes + size,
                               server_messages=c.server_messages + 1, server_bytes=c.server_bytes + size)
            return replace(s, counters=counters, last_seq=r.seq, last_ts=r.ts)
        people = dict(s.people)
        stats = people.get(pid, _NO_STATS)
        people[pid] = replace(stats, messages=stats.messages + 1, bytes=stats.bytes + size)
        counters = replace(c, data_messages=c.data_messages + 1, data_bytes=c.data_bytes + size)
        return replace(s, people=people, counters=counters, last_seq=r.seq, last_ts=r.ts)

    @staticmethod
    def _stream(s: ParticipantsState, r: TextStreamReceived | ByteStreamReceived) -> ParticipantsState:
        """A text or byte stream, counted for its sender (present or not, like data) and for the room."""
        count, size = _STREAM_RECORDS[type(r)]
        c = s.counters
        counters = replace(c, **{count: getattr(c, count) + 1, size: getattr(c, size) + r.size,
                                 "incomplete_streams": c.incomplete_streams + (not r.complete)})
        pid = r.participant_id
        if pid is None:
            return replace(s, counters=counters, last_seq=r.seq, last_ts=r.ts)
        people = dict(s.people)
        stats = people.get(pid, _NO_STATS)
        people[pid] = replace(stats, **{count: getattr(stats, count) + 1, size: getattr(stats, size) + r.size})
        return replace(s, people=people, counters=counters, last_seq=r.seq, last_ts=r.ts)

    @staticmethod
    def _track(s: ParticipantsState, r: Any) -> ParticipantsState:
        kind, subscribe = _TRACK_RECORDS[type(r)]
        who = s.present.get(r.participant_id)
        if who is None:  # an unsubscribe may trail the departure (handlers interleave)
            return _note(s, r, f"{kind} track for an absent participant") if subscribe else _touch(s, r)
        sid, tracks = r.track_sid, getattr(who, kind)
        if (sid in [t.track_sid for t in tracks]) == subscribe:
            return _note(s, r, f"{kind} track {sid!r} " + ("subscribed twice" if subscribe else "not subscribed"))
        if subscribe:
            tracks = tracks + (Track(sid, getattr(r, "video_source", "")),)
        else:
            tracks = tuple([t for t in tracks if t.track_sid != sid])
        present = dict(s.present)
        present[who.identity] = replace(who, **{kind: tracks})
        name = "tracks_subscribed" if subscribe else "tracks_unsubscribed"
        counters = replace(s.counters, **{name: getattr(s.counters, name) + 1})
        return replace(s, present=present, counters=counters, last_seq=r.seq, last_ts=r.ts)

    def _arrived(self, s: ParticipantsState, r: ParticipantConnected) -> ParticipantsState:
        pid, sid = r.participant_id, r.participant_sid
        who = s.present.get(pid)
        if who is not None:  # the transport re-reports people already present after (re)connecting
            present = dict(s.present)
            present[pid] = replace(who, reported=True, sid=sid or who.sid)
            s = replace(s, present=present, last_seq=r.seq, last_ts=r.ts)
            return _note(s, r, f"duplicate connect of {pid!r}") if who.reported else s
        if pid in s.pending:  # back after a provisional departure: presence continues
            pending = dict(s.pending)
            back = pending.pop(pid).who
            present = dict(s.present)
            present[pid] = replace(back, sid=sid or back.sid, reported=True)
            return replace(s, present=present, pending=pending, last_seq=r.seq, last_ts=r.ts)
        present = dict(s.present)
        present[pid] = Present(identity=pid, sid=sid, joined_at=r.ts)
        left = s.left
        before = left.get(pid)
        if before is not None:
            left = dict(left)
            del left[pid]
        people = dict(s.people)
        stats = people.get(pid, _NO_STATS)
        again = _is_rejoin(stats, before)
        people[pid] = replace(stats, joins=stats.joins + 1, rejoins=stats.rejoins + again)
        c = s.counters
        counters = replace(c, joins=c.joins + 1, rejoins=c.rejoins + again,
                           peak_present=max(c.peak_present, len(present)))
        return replace(s, present=present, left=left, people=people, counters=counters, last_seq=r.seq,
                       last_ts=r.ts)

    @staticmethod
    def _gone(s: ParticipantsState, r: ParticipantDisconnected | ParticipantLeft, pid: str, reason: str,
              bit: int) -> ParticipantsState:
        who = s.present.get(pid)
        if who is not None:
            present = dict(s.present)
            del present[pid]
            # maybe a full reconnect's synthetic departure: inside its window, or just before its reconnecting
            where = "pending" if s.bot == "reconnecting" else "suspect" if is_suspect(r) else ""
            if where:
                undecided = dict(getattr(s, where))
                undecided[pid] = Pending(who=replace(who, audio=(), video=()), at=r.ts, reason=reason, seen=bit)
                return replace(s, present=present, last_seq=r.seq, last_ts=r.ts, **{where: undecided})
            left = dict(s.left)
            left[pid] = _departure(who, r.ts, reason, OBSERVED, bit)
            people = dict(s.people)
            people[pid] = _closed(people.get(pid, _NO_STATS), who, r.ts)
            counters = replace(s.counters, leaves=s.counters.leaves + 1)
            return replace(s, present=present, left=left, people=people, counters=counters, last_seq=r.seq,
                           last_ts=r.ts)
        where = "suspect" if pid in s.suspect else "pending" if pid in s.pending else "left"
        earlier: Pending | Departure | None = getattr(s, where).get(pid)
        if earlier is None:
            return _note(s, r, f"departure of unknown participant {pid!r}")
        if earlier.seen & bit:
            return _note(s, r, f"repeated departure of {pid!r}")
        # the other record of pipecat's pair
        completed = replace(earlier, seen=earlier.seen | bit, reason=_better(earlier.reason, reason))
        if isinstance(completed, Pending) and where == "suspect" and not is_suspect(r):
            return replace(_commit(s, {pid: completed}), last_seq=r.seq, last_ts=r.ts)  # it names a real reason
        mapping = dict(getattr(s, where))
        mapping[pid] = completed
        return replace(s, last_seq=r.seq, last_ts=r.ts, **{where: mapping})

    def _session_started(self, s: ParticipantsState, r: SessionStarted) -> ParticipantsState:
        d = _Draft(s, r)
        d.refresh(unreport=True, clear_tracks=True)
        d.count("sessions")
        since = s.window_ts
        if since is None:  # a previous session that never said goodbye was last heard of at last_ts
            since = r.ts if s.bot == "idle" else s.last_ts
        return d.build(bot="joining", session=r.session, window_ts=since, window_reason=LEFT_WHILE_AWAY)

    def _snapshot(self, s: ParticipantsState, r: Connected | Reconnected) -> ParticipantsState:
        resumed = isinstance(r, Reconnected)
        if resumed and s.bot in ("idle", "away"):
            return _note(s, r, f"reconnected while the bot is {s.bot}")
        d = _Draft(s, r)
        if s.bot == "connected" or (resumed and s.bot != "reconnecting"):
            d.notes.append(f"{tag_of(r)} while the bot is {s.bot}")
        d.reconcile(r.participants, r.ts)
        return d.build(bot="connected", window_ts=None, window_reason="")

    def _reconnecting(self, s: ParticipantsState, r: Record) -> ParticipantsState:
        if s.bot not in ("connected", "joining"):
            return _note(s, r, f"reconnecting while the bot is {s.bot}")
        d = _Draft(s, r)
        d.refresh(unreport=True, clear_tracks=False)
        d.count("reconnects")
        if s.suspect:  # the departures just before were the full reconnect's: provisional now
            d.own("pending").update(s.suspect)
            d.own("suspect").clear()
        return d.build(bot="reconnecting", window_ts=_since(s, r),
                       window_reason=s.window_reason or LEFT_WHILE_RECONNECTING)

    def _disconnected(self, s: ParticipantsState, r: Record) -> ParticipantsState:
        if s.bot in ("idle", "away"):
            return _note(s, r, f"disconnected while the bot is {s.bot}")
        d = _Draft(s, r)
        d.refresh(unreport=False, clear_tracks=True)
        d.count("bot_disconnects")
        return d.build(bot="away", window_ts=_since(s, r), window_reason=LEFT_WHILE_AWAY)

    def _session_ended(self, s: ParticipantsState, r: SessionEnded) -> ParticipantsState:
        d = _Draft(s, r)
        if s.bot == "idle":
            d.notes.append("session_ended with no session")
        if r.rejoin:
            return d.build(bot="away", window_ts=_since(s, r), window_reason=LEFT_WHILE_AWAY)
        at = _since(s, r)
        for pend in s.pending.values():
            d.leave(pend.who, pend.at, pend.reason, OBSERVED, pend.seen)
        d.owned.add("pending")
        d.pending = {}
        for who in s.present.values():
            d.leave(who, at, r.reason or "session_ended", SESSION_END)
        return d.build(bot="idle", window_ts=None, window_reason="")


PARTICIPANTS: Final = ParticipantTracker()


def seconds_present(state: ParticipantsState, identity: str, now: float) -> float:
    """Total time ``identity`` has been present: closed intervals plus the open one up to ``now``."""
    stats = state.people.get(identity, _NO_STATS)
    who = state.present.get(identity)
    if who is None:  # an undecided departure keeps counting until it is decided
        undecided = state.suspect.get(identity) or state.pending.get(identity)
        who = undecided.who if undecided is not None else None
    open_part = max(0.0, now - who.joined_at) if who is not None else 0.0
    return stats.seconds + open_part


def presence_seconds(state: ParticipantsState, now: float) -> dict[str, float]:
    """:func:`seconds_present` for every identity the room has seen."""
    names = dict.fromkeys([*state.people, *state.present, *state.suspect, *state.pending])
    return {identity: seconds_present(state, identity, now) for identity in names}

