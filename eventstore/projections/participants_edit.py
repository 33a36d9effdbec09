"""How the ``participants`` reducer edits a state: the building steps its handlers share.

A state is immutable (msgspec Structs, dicts never changed once built): every step returns a new state that
shares what did not change. The plain steps note an anomaly (keeping the last ``ANOMALY_LIMIT``), move the
position, tell a rejoin from a first join, make a departure and close its presence interval, and commit
suspect departures as real. Handlers that change many people at once (the bot's session and window records)
use a :class:`_Draft`: the state's dicts, copied on first write, edited in place and frozen into the next
state.

Which step a record takes, and why, is :mod:`eventstore.projections.participants` (its docstring has the rules);
these helpers are its internals.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from msgspec.structs import replace

from ..records import Record, tag_of
from .participants_model import (
    ABSENT_FROM_SNAPSHOT, ANOMALY_LIMIT, INFERRED, OBSERVED, SESSION_END, Anomaly, Departure, Pending, PersonStats,
    Present, ParticipantsState,
)

_NO_STATS: Final = PersonStats()


def _note(state: ParticipantsState, record: Record, description: str) -> ParticipantsState:
    """``state`` with one more anomaly and nothing else changed but the position."""
    anomaly = Anomaly(record.seq, tag_of(record), description)
    counters = replace(state.counters, anomalies=state.counters.anomalies + 1)
    return replace(state, anomalies=(state.anomalies + (anomaly,))[-ANOMALY_LIMIT:], counters=counters,
                   last_seq=record.seq, last_ts=record.ts)


def _touch(state: ParticipantsState, record: Record) -> ParticipantsState:
    return replace(state, last_seq=record.seq, last_ts=record.ts)


def _is_rejoin(stats: PersonStats, before: Departure | None) -> bool:
    """Whether a join is a return: they joined before and were not merely dropped by the bot's session end."""
    return stats.joins > 0 and (before is None or before.kind != SESSION_END)


def _departure(who: Present, at: float, reason: str, kind: str, seen: int) -> Departure:
    return Departure(identity=who.identity, sid=who.sid, joined_at=who.joined_at, left_at=at, reason=reason,
                     kind=kind, seen=seen)


def _closed(stats: PersonStats, who: Present, at: float) -> PersonStats:
    """``stats`` with the presence interval of ``who`` closed at ``at``."""
    return replace(stats, seconds=stats.seconds + max(0.0, at - who.joined_at))


def _commit(s: ParticipantsState, gone: dict[str, Pending]) -> ParticipantsState:
    """``s`` with the undecided departures ``gone`` (taken out of ``s.suspect``) made real, at their own time."""
    suspect = {} if gone is s.suspect else {k: v for k, v in s.suspect.items() if k not in gone}
    left, people = dict(s.left), dict(s.people)
    for identity, pend in gone.items():
        left[identity] = _departure(pend.who, pend.at, pend.reason, OBSERVED, pend.seen)
        people[identity] = _closed(people.get(identity, _NO_STATS), pend.who, pend.at)
    counters = replace(s.counters, leaves=s.counters.leaves + len(gone))
    return replace(s, suspect=suspect, left=left, people=people, counters=counters)


class _Draft:
    """A state's dicts, copied on first write (``own``), edited in place and frozen again by :meth:`build`."""

    __slots__ = ("incr", "left", "notes", "owned", "pending", "people", "present", "record", "state", "suspect")

    def __init__(self, state: ParticipantsState, record: Record) -> None:
        self.state, self.record = state, record
        self.present, self.pending, self.left, self.people = state.present, state.pending, state.left, state.people
        self.suspect = state.suspect
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
        """Close a window with the snapshot of who is in the room (the rules: :mod:`.participants`' docstring)."""
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
        return replace(state, present=self.present, suspect=self.suspect, pending=self.pending, left=self.left,
                       people=self.people,
                       counters=counters, anomalies=anomalies, last_seq=record.seq, last_ts=record.ts,
                       **changes)
