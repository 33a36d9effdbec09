"""Who is in a room (projection ``participants``): a pure reducer over one room's records.

Presence survives the bot's own trouble (rules and reasons: ``docs/callstate.md``, "Participants"):

- A *window* opens when the bot loses its view of the room (rtc ``reconnecting``, its ``disconnected``,
  ``session_ended(rejoin=True)``, a ``session_started`` the previous session never closed). Inside a
  ``reconnecting`` window departures are provisional (``pending``): a full reconnect reports everyone gone.
- The next snapshot (``connected`` / ``reconnected`` ``participants``) closes it: people in it keep their
  presence (same ``joined_at``, no rejoin); pending people not in it left when their departure said; present
  people neither in it nor re-reported since the window opened left at its start (``left_while_bot_away`` ...).
- ``session_ended(rejoin=False)`` marks everyone left with its reason. Joining again after a departure counts a
  rejoin, unless that departure was only the bot's session ending.
- pipecat reports one departure twice (``participant_disconnected``, ``participant_left``): the second completes
  the first. Records that do not fit become anomalies (the last ``ANOMALY_LIMIT``); ``apply`` never raises.

Deduplication by ``seq`` is the consumer runner's job; this reducer applies what it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec
from msgspec.structs import replace

from ..records import (
    AudioTrackSubscribed, AudioTrackUnsubscribed, BeforeDisconnect, CallStateUpdated, Connected, DataReceived,
    Disconnected, FirstParticipantJoined, ParticipantConnected, ParticipantDisconnected, ParticipantLeft,
    Reconnected, Reconnecting, Record, SessionEnded, SessionStarted, VideoTrackSubscribed,
    VideoTrackUnsubscribed, tag_of,
)

ANOMALY_LIMIT: Final = 20
LEFT_WHILE_AWAY: Final = "left_while_bot_away"
LEFT_WHILE_RECONNECTING: Final = "left_while_reconnecting"
ABSENT_FROM_SNAPSHOT: Final = "absent_from_snapshot"
# Departure.seen bits: which records of pipecat's pair (disconnected, left) reported this departure.
SEEN_DISCONNECTED: Final = 1
SEEN_LEFT: Final = 2
# Departure.kind
OBSERVED: Final = "observed"  # a participant_disconnected / participant_left record
INFERRED: Final = "inferred"  # absent from the snapshot that closed a window
SESSION_END: Final = "session_end"  # the bot's session ended for good; nobody saw them go


class Anomaly(msgspec.Struct, frozen=True, gc=False):
    """A record that did not fit the state it was applied to."""
    seq: int
    event: str
    description: str


class Track(msgspec.Struct, frozen=True, gc=False):
    """A subscribed track; ``source`` is the video source (``camera``, ``screen_share``), empty for audio."""
    track_sid: str
    source: str = ""


class Present(msgspec.Struct, frozen=True, kw_only=True):
    """Someone in the room now. ``reported`` is false until a ``participant_connected`` confirms them after the
    bot's latest (re)connection; a snapshot only keeps unreported people that it lists."""
    identity: str
    sid: str = ""
    joined_at: float
    reported: bool = True
    audio: tuple[Track, ...] = ()
    video: tuple[Track, ...] = ()


class Departure(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The latest departure of someone who is gone now."""
    identity: str
    sid: str = ""
    joined_at: float
    left_at: float
    reason: str = ""
    kind: str = OBSERVED
    seen: int = 0


class Pending(msgspec.Struct, frozen=True, kw_only=True):
    """A provisional departure inside a reconnect window; ``who`` is the presence it may resume."""
    who: Present
    at: float
    reason: str = ""
    seen: int = 0


class PersonStats(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Per identity, over the room's life. ``seconds`` sums closed presence intervals only."""
    joins: int = 0
    rejoins: int = 0
    messages: int = 0
    bytes: int = 0
    seconds: float = 0.0


class RoomCounters(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    joins: int = 0
    rejoins: int = 0
    leaves: int = 0
    data_messages: int = 0  # all data packets, including server ones
    data_bytes: int = 0
    server_messages: int = 0  # packets with no participant (sent by a server SDK)
    server_bytes: int = 0
    tracks_subscribed: int = 0
    tracks_unsubscribed: int = 0
    sessions: int = 0
    reconnects: int = 0
    bot_disconnects: int = 0
    peak_present: int = 0
    anomalies: int = 0


class ParticipantsState(msgspec.Struct, frozen=True, kw_only=True):
    """``bot`` is ``idle``, ``joining``, ``connected``, ``reconnecting`` or ``away``; ``window_ts`` is set while
    a window is open and ``window_reason`` is what people absent from the closing snapshot left with."""
    room: str
    last_seq: int = 0
    last_ts: float = 0.0
    session: str = ""
    bot: str = "idle"
    window_ts: float | None = None
    window_reason: str = ""
    present: dict[str, Present] = {}
    pending: dict[str, Pending] = {}
    left: dict[str, Departure] = {}
    people: dict[str, PersonStats] = {}
    counters: RoomCounters = RoomCounters()
    anomalies: tuple[Anomaly, ...] = ()


_NO_STATS: Final = PersonStats()
_TRACK_RECORDS: Final = {AudioTrackSubscribed: ("audio", True), AudioTrackUnsubscribed: ("audio", False),
                         VideoTrackSubscribed: ("video", True), VideoTrackUnsubscribed: ("video", False)}


def _better(old: str, new: str) -> str:
    """Keep a real reason over pipecat's placeholder ``disconnected`` or nothing."""
    return new if new and old in ("", "disconnected") else old


def _note(state: ParticipantsState, record: Record, description: str) -> ParticipantsState:
    """``state`` with one more anomaly and nothing else changed but the position."""
    anomaly = Anomaly(record.seq, tag_of(record), description)
    counters = replace(state.counters, anomalies=state.counters.anomalies + 1)
    return replace(state, anomalies=(state.anomalies + (anomaly,))[-ANOMALY_LIMIT:], counters=counters,
                   last_seq=record.seq, last_ts=record.ts)


def _touch(state: ParticipantsState, record: Record) -> ParticipantsState:
    return replace(state, last_seq=record.seq, last_ts=record.ts)


def _since(state: ParticipantsState, record: Record) -> float:
    """When the current window opened, or ``record``'s time if none is open."""
    return record.ts if state.window_ts is None else state.window_ts


def _is_rejoin(stats: PersonStats, before: Departure | None) -> bool:
    """Whether a join is a return: they joined before and were not merely dropped by the bot's session end."""
    return stats.joins > 0 and (before is None or before.kind != SESSION_END)


def _departure(who: Present, at: float, reason: str, kind: str, seen: int) -> Departure:
    return Departure(identity=who.identity, sid=who.sid, joined_at=who.joined_at, left_at=at, reason=reason,
                     kind=kind, seen=seen)


def _closed(stats: PersonStats, who: Present, at: float) -> PersonStats:
    """``stats`` with the presence interval of ``who`` closed at ``at``."""
    return replace(stats, seconds=stats.seconds + max(0.0, at - who.joined_at))


class _Draft:
    """A state's dicts, copied on first write (``own``), edited in place and frozen again by :meth:`build`."""

    __slots__ = ("incr", "left", "notes", "owned", "pending", "people", "present", "record", "state")

    def __init__(self, state: ParticipantsState, record: Record) -> None:
        self.state, self.record = state, record
        self.present, self.pending, self.left, self.people = state.present, state.pending, state.left, state.people
        self.owned: set[str] = set()
        self.incr: dict[str, int] = {}
        self.notes: list[str] = []

    def own(self, name: str) -> dict[str, Any]:
        mapping = getattr(self, name)
        if name not in self.owned:
            self.owned.add(name)
            mapping = dict(mapping)
            setattr(self, name, mapping)
        return mapping

    def count(self, name: str) -> None:
        self.incr[name] = self.incr.get(name, 0) + 1

    def join(self, identity: str, sid: str, at: float, reported: bool) -> None:
        stats = self.people.get(identity, _NO_STATS)
        before = self.own("left").pop(identity) if identity in self.left else None
        rejoin = _is_rejoin(stats, before)
        self.own("people")[identity] = replace(stats, joins=stats.joins + 1, rejoins=stats.rejoins + rejoin)
        self.own("present")[identity] = Present(identity=identity, sid=sid, joined_at=at, reported=reported)
        self.count("joins")
        if rejoin:
            self.count("rejoins")

    def leave(self, who: Present, at: float, reason: str, kind: str, seen: int = 0) -> None:
        identity = who.identity
        if identity in self.present:
            self.own("present").pop(identity)
        self.own("left")[identity] = _departure(who, at, reason, kind, seen)
        self.own("people")[identity] = _closed(self.people.get(identity, _NO_STATS), who, at)
        self.count("leaves")

    def refresh(self, unreport: bool, clear_tracks: bool) -> None:
        """Mark everyone unreported (a window opens) and/or drop their tracks (the bot's subscriptions ended)."""
        changes: dict[str, Any] = {"reported": False} if unreport else {}
        if clear_tracks:
            changes.update(audio=(), video=())
        self.owned.add("present")
        self.present = {k: replace(p, **changes) for k, p in self.present.items()}

    def reconcile(self, snapshot: Iterable[str], now: float) -> None:
        """Close a window with the snapshot of who is in the room (see the module docstring)."""
        state = self.state
        names = set(snapshot)
        since = now if state.window_ts is None else state.window_ts
        why = state.window_reason or ABSENT_FROM_SNAPSHOT
        for identity, pend in state.pending.items():
            self.own("pending").pop(identity)
            if identity in names:
                self.own("present")[identity] = replace(pend.who, reported=False)
            else:
                self.leave(pend.who, pend.at, pend.reason, OBSERVED, pend.seen)
        for identity, who in state.present.items():
            if not who.reported and identity not in names:
                self.leave(who, since, why, INFERRED)
        for identity in snapshot:
            if identity not in self.present:
                self.join(identity, "", now, reported=False)

    def build(self, **changes: object) -> ParticipantsState:
        state, record = self.state, self.record
        counters = state.counters
        if self.notes:
            self.incr["anomalies"] = len(self.notes)
        if self.incr:
            counters = replace(counters, **{k: getattr(counters, k) + n for k, n in self.incr.items()})
        if len(self.present) > counters.peak_present:
            counters = replace(counters, peak_present=len(self.present))
        anomalies = state.anomalies
        if self.notes:
            tag = tag_of(record)
            fresh = tuple(Anomaly(record.seq, tag, text) for text in self.notes)
            anomalies = (anomalies + fresh)[-ANOMALY_LIMIT:]
        return replace(state, present=self.present, pending=self.pending, left=self.left, people=self.people,
                       counters=counters, anomalies=anomalies, last_seq=record.seq, last_ts=record.ts,
                       **changes)


class ParticipantTracker:
    """The ``participants`` projection: presence, departures, rejoins, data and tracks per identity."""

    name = "participants"
    state_type = ParticipantsState

    def __init__(self) -> None:
        self._handlers: dict[type, Callable[[ParticipantsState, Any], ParticipantsState]] = {
            DataReceived: self._data,
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
        }

    def initial(self, room: str) -> ParticipantsState:
        return ParticipantsState(room=room)

    def apply(self, state: ParticipantsState, record: Record) -> ParticipantsState:
        handler = self._handlers.get(type(record))
        if handler is None:
            return state
        if record.room != state.room:
            return _note(state, record, f"record for room {record.room!r}")
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
    def _gone(s: ParticipantsState, r: Record, pid: str, reason: str, bit: int) -> ParticipantsState:
        who = s.present.get(pid)
        if who is not None:
            present = dict(s.present)
            del present[pid]
            if s.bot == "reconnecting":  # maybe a full reconnect's synthetic departure
                pending = dict(s.pending)
                pending[pid] = Pending(who=replace(who, audio=(), video=()), at=r.ts, reason=reason, seen=bit)
                return replace(s, present=present, pending=pending, last_seq=r.seq, last_ts=r.ts)
            left = dict(s.left)
            left[pid] = _departure(who, r.ts, reason, OBSERVED, bit)
            people = dict(s.people)
            people[pid] = _closed(people.get(pid, _NO_STATS), who, r.ts)
            counters = replace(s.counters, leaves=s.counters.leaves + 1)
            return replace(s, present=present, left=left, people=people, counters=counters, last_seq=r.seq,
                           last_ts=r.ts)
        where = "pending" if pid in s.pending else "left"
        earlier: Pending | Departure | None = getattr(s, where).get(pid)
        if earlier is None:
            return _note(s, r, f"departure of unknown participant {pid!r}")
        if earlier.seen & bit:
            return _note(s, r, f"repeated departure of {pid!r}")
        mapping = dict(getattr(s, where))  # the other record of pipecat's pair
        mapping[pid] = replace(earlier, seen=earlier.seen | bit, reason=_better(earlier.reason, reason))
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
    if who is None and identity in state.pending:
        who = state.pending[identity].who
    open_part = max(0.0, now - who.joined_at) if who is not None else 0.0
    return stats.seconds + open_part


def presence_seconds(state: ParticipantsState, now: float) -> dict[str, float]:
    """:func:`seconds_present` for every identity the room has seen."""
    names = dict.fromkeys([*state.people, *state.present, *state.pending])
    return {identity: seconds_present(state, identity, now) for identity in names}

