"""Hypothesis strategies for records: arbitrary ones, and *valid* per-room histories from a small room simulator.

Reusable entry points:

- :func:`any_record` / :func:`record_sequences`: any record type with random (type-correct) fields.
- :func:`valid_room_history`: one room's records (seq 1..n, strictly increasing ts) plus what a correct reader
  must conclude from them (:class:`RoomHistory`).
- :func:`valid_room_histories`: ``{room: [records]}`` for several rooms.
- :func:`interleaved`: one feed merging several rooms' records, each room's order kept.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from hypothesis import strategies as st

from eventstore.records import (
    RECORD_TYPES, AudioTrackSubscribed, AudioTrackUnsubscribed, BeforeDisconnect, ByteStreamReceived,
    CallStateUpdated, Connected, DataReceived, Disconnected, FirstParticipantJoined, ParticipantConnected,
    ParticipantDisconnected, ParticipantLeft, Reconnected, Reconnecting, Record, SessionEnded, SessionStarted,
    StoreRestored, StoreUnavailable, TextStreamReceived, VideoTrackSubscribed, VideoTrackUnsubscribed,
)

ROOMS = ("room-a", "room-b", "room-c", "room/ü d")
IDENTITIES = ("alice", "bob", "carol", "dave", "erin")
PARTICIPANT_REASONS = ("CLIENT_INITIATED", "DUPLICATE_IDENTITY", "PARTICIPANT_REMOVED", "SIGNAL_CLOSE", "UNKNOWN",
                       "UNKNOWN_REASON")
NO_REASON = "UNKNOWN_REASON"  # what LiveKit reports for a full reconnect's synthetic departures
# records after which a departure with no reason is still undecided (suspect); reconnecting decides it differently
KEEPS_SUSPECTS = (ParticipantDisconnected, ParticipantLeft, AudioTrackUnsubscribed, VideoTrackUnsubscribed,
                  CallStateUpdated, StoreUnavailable, StoreRestored, TextStreamReceived, ByteStreamReceived)
STREAM_TOPICS = ("lk.chat", "lk.transcription", "files", "", "weird topic/ü\x00")
SESSION_REASONS = ("left", "drained", "room_closed", "removed", "pipeline_error", "connection_lost",
                   "join_failed", "restart_budget_exhausted", "failed", "")
BASE_TS = 1_700_000_000.0

# --- arbitrary records ------------------------------------------------------------------------------------

_small_text = st.text(alphabet="abcxyz_-1", max_size=6)
_BY_NAME: dict[str, st.SearchStrategy[Any]] = {
    "seq": st.integers(0, 10_000),
    "v": st.integers(0, 3),
    "ts": st.floats(0, 2e9, allow_nan=False, allow_infinity=False),
    "epoch": st.integers(0, 5),
    "participant_id": st.sampled_from(IDENTITIES[:3]),
    "identity": st.sampled_from(("bot-1", "bot-2", *IDENTITIES[:2])),
    "participants": st.lists(st.sampled_from(IDENTITIES[:3]), max_size=4),
    "participant_sid": st.sampled_from(("", "PA_1", "PA_2")),
    "track_sid": st.sampled_from(("", "TR_1", "TR_2")),
    "video_source": st.sampled_from(("", "camera", "screen_share")),
    "reason": st.sampled_from((*PARTICIPANT_REASONS, *SESSION_REASONS, "disconnected")) | _small_text,
    "disconnect_reason": st.sampled_from(("", *PARTICIPANT_REASONS)),
    "state": st.sampled_from(("joining", "joined", "left", "bogus")),
    "cause": st.sampled_from(("", "join", "rejoin", "restart", "takeover", "connected")),
    "data": st.binary(max_size=40),
    "text": st.text(max_size=24),  # any unicode: NUL, controls, astral characters
    "size": st.integers(0, 5_000_000),
    "declared_size": st.integers(0, 5_000_000),
    "topic": st.sampled_from(STREAM_TOPICS) | _small_text,
    "attributes": st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=3),
}
_BY_TYPE: dict[Any, st.SearchStrategy[Any]] = {
    str: _small_text,
    int: st.integers(0, 5),
    bool: st.booleans(),
    bytes: st.binary(max_size=16),
    list[str]: st.lists(_small_text, max_size=3),
    float: st.floats(0, 2e9, allow_nan=False, allow_infinity=False),
    dict[str, str]: st.dictionaries(_small_text, _small_text, max_size=3),
}


def _field_strategy(name: str, annotation: Any) -> st.SearchStrategy[Any]:
    base = _BY_NAME[name] if name in _BY_NAME else _BY_TYPE[annotation if annotation in _BY_TYPE else str]
    if annotation == (str | None):
        return st.none() | base
    return base


def any_record(room: str = "room-a", sessions: tuple[str, ...] = ("s1", "s2"),
               foreign_rooms: bool = True) -> st.SearchStrategy[Record]:
    """Any record type, every field random but type-correct (identities from a small pool so they collide)."""
    rooms = st.sampled_from((room, room, room, "elsewhere")) if foreign_rooms else st.just(room)

    def build(cls: type[Record]) -> st.SearchStrategy[Record]:
        fields = {}
        for f in msgspec.structs.fields(cls):
            if f.name == "room":
                fields[f.name] = rooms
            elif f.name == "session":
                fields[f.name] = st.sampled_from(sessions)
            elif f.name != "producer":
                fields[f.name] = _field_strategy(f.name, f.type)
        return st.fixed_dictionaries(fields).map(lambda kw: cls(**kw))

    return st.sampled_from(RECORD_TYPES).flatmap(build)


def record_sequences(room: str = "room-a", max_size: int = 60, numbered: bool | None = None,
                     ) -> st.SearchStrategy[list[Record]]:
    """Lists of arbitrary records; ``numbered`` (random when None) renumbers seq 1..n with increasing ts."""
    lists = st.lists(any_record(room), max_size=max_size)
    flags = st.booleans() if numbered is None else st.just(numbered)
    return st.tuples(lists, flags).map(lambda pair: renumber(pair[0]) if pair[1] else pair[0])


def renumber(records: list[Record]) -> list[Record]:
    """Copies with seq 1..n and ts strictly increasing (order kept)."""
    return [msgspec.structs.replace(r, seq=i, ts=BASE_TS + i) for i, r in enumerate(records, 1)]


class Script:
    """Scripted records for one room: ``seq`` counts up from 1 and ``ts`` from ``BASE_TS`` (``step`` seconds
    apart unless ``at=`` says otherwise). ``session`` follows the latest ``SessionStarted``'s ``session=``."""

    def __init__(self, room: str = "room-a", step: float = 1.0) -> None:
        self.room, self.step, self.seq, self.ts, self.session = room, step, 0, BASE_TS, "s1"
        self.records: list[Record] = []

    def __call__(self, cls: type[Record], *, at: float | None = None, **fields: Any) -> Record:
        self.seq += 1
        self.ts = BASE_TS + at if at is not None else self.ts + self.step
        self.session = fields.pop("session", self.session)
        record = cls(seq=self.seq, room=self.room, session=self.session, ts=self.ts, **fields)
        self.records.append(record)
        return record


# --- valid histories ----------------------------------------------------------------------------------------


@dataclass
class RoomHistory:
    """One room's records and what the participants and call-state projections must conclude from them.

    ``bot`` is ``in``, ``away`` (will rejoin) or ``out``; ``world`` is who is really in the room; ``present``
    is who the participants projection shows present (it cannot see changes while the bot is away); ``suspect``
    who really left with no reason (``UNKNOWN_REASON``) and is not decided yet (no record but more departures,
    unsubscribes and ``call_state_updated`` since); ``pending`` who a full reconnect reported gone, in a reconnect
    window that is still open (the bot is away after a failed full reconnect).
    """

    room: str
    records: list[Record] = field(default_factory=list)
    bot: str = "out"
    world: dict[str, str] = field(default_factory=dict)  # identity -> sid
    present: set[str] = field(default_factory=set)
    suspect: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)
    state: str = "initialized"
    phase: str = "idle"
    joins: Counter[str] = field(default_factory=Counter)
    rejoins: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)
    data_bytes: Counter[str] = field(default_factory=Counter)
    # per sender: (text_streams, text_bytes, byte_streams, byte_stream_bytes) as PersonStats names them
    streams: dict[str, Counter[str]] = field(default_factory=dict)
    audio: dict[str, set[str]] = field(default_factory=dict)
    video: dict[str, dict[str, str]] = field(default_factory=dict)


class _Sim:
    """Plays a room forward, emitting records the way the recording transport would."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any], room: str) -> None:
        self.draw, self.h = draw, RoomHistory(room)
        self.seq, self.ts, self.sessions, self.sids = 0, BASE_TS, 0, 0
        self.session = ""
        self.gone_with_session: set[str] = set()  # last departure was only the bot's session ending
        # Real departures with no reason that a reconnecting made provisional: until that window closes they must
        # not come back, because a return inside it looks exactly like a full reconnect's (presence continues).
        self.no_return: set[str] = set()

    def emit(self, cls: type[Record], **fields: Any) -> None:
        self.seq += 1
        self.ts += self.draw(st.sampled_from((0.001, 0.5, 1.0, 7.25, 60.0)))
        self.h.records.append(cls(seq=self.seq, room=self.h.room, session=self.session, ts=self.ts,
                                  producer="sim", epoch=self.sessions, **fields))
        h = self.h
        if not h.suspect or cls in KEEPS_SUSPECTS:
            return
        if cls is Reconnecting:  # the suspects become the window's provisional departures
            self.no_return |= h.suspect  # (a real leave here is told apart only by the closing snapshot)
            h.pending |= h.suspect
        elif h.state in ("joined", "leaving"):  # committed: the phase catches up
            h.phase = "active" if h.world else "waiting"
        h.suspect.clear()

    def pick(self, options: Any) -> Any:
        return self.draw(st.sampled_from(sorted(options)))

    def subset(self, options: Any) -> list[Any]:
        return self.draw(st.lists(st.sampled_from(sorted(options)), unique=True)) if options else []

    # what the participants projection sees
    def seen_join(self, who: str) -> None:
        h = self.h
        if h.joins[who] and who not in self.gone_with_session:
            h.rejoins[who] += 1
        h.joins[who] += 1
        self.gone_with_session.discard(who)
        h.present.add(who)

    def seen_leave(self, who: str, session_end: bool = False) -> None:
        self.h.present.discard(who)
        (self.gone_with_session.add if session_end else self.gone_with_session.discard)(who)

    def seen_back(self, who: str) -> None:
        """A full reconnect's provisional departure confirmed: presence continues."""
        self.h.pending.discard(who)
        self.h.present.add(who)

    def close_window(self, snapshot: list[str]) -> None:
        """A snapshot decides the provisional departures: back if listed, else they left (when they said)."""
        for who in sorted(self.h.pending):
            if who in snapshot:
                self.seen_back(who)
            else:
                self.seen_leave(who)
        self.h.pending.clear()
        self.no_return.clear()

    def sync_phase(self) -> None:
        self.h.phase = "active" if self.h.world or self.h.suspect else "waiting"  # a suspect holds the phase

    def new_sid(self) -> str:
        self.sids += 1
        return f"PA_{self.sids}"

    # the world changing where the bot cannot see it
    def silent_changes(self) -> None:
        for who in self.subset(self.h.world):
            del self.h.world[who]
        for who in self.subset(set(IDENTITIES) - set(self.h.world) - self.no_return):
            self.h.world[who] = self.new_sid()
        self.h.audio.clear()
        self.h.video.clear()

    def connect_session(self, cause: str) -> None:
        """session_started, existing people reported around connected (either side), connected."""
        h = self.h
        self.sessions += 1
        self.session = f"{h.room}#{self.sessions}"
        self.emit(SessionStarted, identity=f"bot-{self.sessions}", pipeline="echo", attempt=0, cause=cause)
        h.state, h.phase = "joining", ("idle" if h.phase == "ended" else h.phase)
        early = self.subset(h.world)
        for who in early:
            self.emit(ParticipantConnected, participant_id=who, participant_sid=h.world[who])
            if who in h.pending:
                self.seen_back(who)
        snapshot = sorted(h.world)
        self.emit(Connected, identity=f"bot-{self.sessions}", participants=snapshot)
        self.close_window(snapshot)
        for who in sorted(h.present - set(h.world)):
            self.seen_leave(who)
        for who in snapshot:
            if who not in h.present:
                self.seen_join(who)
        for who in sorted(set(h.world) - set(early)):
            if self.draw(st.booleans()):
                self.emit(ParticipantConnected, participant_id=who, participant_sid=h.world[who])
        h.bot, h.state = "in", "joined"
        self.sync_phase()

    def end_session(self, reason: str, rejoin: bool) -> None:
        h = self.h
        self.emit(SessionEnded, reason=reason, rejoin=rejoin)
        if rejoin:
            h.bot, h.state = "away", "reconnecting"
            return
        for who in sorted(h.pending):  # they left as their provisional departure said, not by the session's end
            self.seen_leave(who)
        h.pending.clear()
        self.no_return.clear()
        for who in sorted(h.present):
            self.seen_leave(who, session_end=True)
        failed = reason in ("restart_budget_exhausted", "join_failed", "connection_lost", "pipeline_error")
        h.bot, h.state, h.phase = "out", ("failed" if failed else "left"), "ended"
        h.audio.clear()
        h.video.clear()

    # --- actions: each emits what the transport would record ------------------------------------------------

    def start(self, cause: str = "join") -> None:
        self.silent_changes()
        self.connect_session(cause)

    def rejoin(self) -> None:
        self.start("rejoin")

    def join_fails(self) -> None:
        self.sessions += 1
        self.session = f"{self.h.room}#{self.sessions}"
        self.emit(SessionStarted, identity=f"bot-{self.sessions}", attempt=1, cause="rejoin")
        self.h.state = "joining"
        give_up = self.draw(st.booleans())
        self.end_session("restart_budget_exhausted" if give_up else "join_failed", rejoin=not give_up)

    def join(self) -> None:
        h = self.h
        who = self.pick(set(IDENTITIES) - set(h.world))
        first, sid = not h.world, self.new_sid()
        h.world[who] = sid
        self.emit(ParticipantConnected, participant_id=who, participant_sid=sid, kind="STANDARD")
        if first:
            self.emit(FirstParticipantJoined, participant_id=who, participant_sid=sid)
        self.seen_join(who)
        self.sync_phase()

    def leave(self) -> None:
        h = self.h
        who = self.pick(h.world)
        sid = h.world.pop(who)
        audio, video = h.audio.pop(who, set()), h.video.pop(who, {})
        for track in self.subset(audio):
            self.emit(AudioTrackUnsubscribed, participant_id=who, participant_sid=sid, track_sid=track)
        reason = self.pick(PARTICIPANT_REASONS)
        if reason == NO_REASON:  # undecided until the next record that is not a departure or the like
            h.suspect.add(who)
        pair = [(ParticipantDisconnected, {"reason": reason}),
                (ParticipantLeft, {"reason": "disconnected", "disconnect_reason": reason})]
        shape = self.draw(st.sampled_from(("pair", "reversed", "first", "second")))
        pair = {"pair": pair, "reversed": pair[::-1], "first": pair[:1], "second": pair[1:]}[shape]
        for cls, extra in pair:
            self.emit(cls, participant_id=who, participant_sid=sid, **extra)
        for track in self.subset(video):  # handlers interleave: an unsubscribe may trail the departure
            self.emit(VideoTrackUnsubscribed, participant_id=who, participant_sid=sid, track_sid=track)
        self.seen_leave(who)
        self.sync_phase()

    def subscribe(self) -> None:
        h = self.h
        who = self.pick(h.world)
        self.sids += 1
        track = f"TR_{self.sids}"
        if self.draw(st.booleans()):
            h.audio.setdefault(who, set()).add(track)
            self.emit(AudioTrackSubscribed, participant_id=who, participant_sid=h.world[who], track_sid=track)
        else:
            source = self.pick(("camera", "screen_share"))
            h.video.setdefault(who, {})[track] = source
            self.emit(VideoTrackSubscribed, participant_id=who, participant_sid=h.world[who], track_sid=track,
                      video_source=source)

    def unsubscribe(self) -> None:
        h = self.h
        tracks = [(w, "a", t) for w, ts in h.audio.items() for t in ts]
        tracks += [(w, "v", t) for w, ts in h.video.items() for t in ts]
        who, kind, track = self.pick(tracks)
        if kind == "a":
            h.audio[who].discard(track)
            self.emit(AudioTrackUnsubscribed, participant_id=who, participant_sid=h.world[who], track_sid=track)
        else:
            source = h.video[who].pop(track)
            self.emit(VideoTrackUnsubscribed, participant_id=who, participant_sid=h.world[who], track_sid=track,
                      video_source=source)

    def data(self) -> None:
        h = self.h
        who = self.draw(st.none() | st.sampled_from(sorted(h.world))) if h.world else None
        payload = self.draw(st.binary(max_size=24))
        self.emit(DataReceived, participant_id=who, data=payload, participant_sid=h.world.get(who or "", ""),
                  topic="chat")
        if who is not None:
            h.messages[who] += 1
            h.data_bytes[who] += len(payload)

    def stream(self) -> None:
        """A text or byte stream ended: from someone in the room, someone the bot has not seen, or no one; maybe
        truncated or cut short (a stream's record lands whenever it ends, so it decides no suspect)."""
        h = self.h
        who = self.draw(st.none() | st.sampled_from(sorted(h.world) or IDENTITIES))
        size = self.draw(st.integers(0, 3_000_000))
        common = {"participant_id": who, "participant_sid": h.world.get(who or "", ""),
                  "topic": self.draw(st.sampled_from(STREAM_TOPICS)), "stream_id": f"ST_{self.seq}", "size": size,
                  "truncated": size > 1_048_576, "complete": self.draw(st.booleans()), "opened_at": self.ts}
        if self.draw(st.booleans()):
            self.emit(TextStreamReceived, text=self.draw(st.text(max_size=12)), **common)
            count, total = "text_streams", "text_bytes"
        else:
            self.emit(ByteStreamReceived, name="f.bin", data=self.draw(st.binary(max_size=12)), **common)
            count, total = "byte_streams", "byte_stream_bytes"
        if who is not None:
            mine = h.streams.setdefault(who, Counter())
            mine[count] += 1
            mine[total] += size

    def resume(self) -> None:
        """rtc resume: reconnecting, call_state_updated, (people may come and go unseen), reconnected with the
        snapshot."""
        h = self.h
        self.emit(Reconnecting)
        self.emit(CallStateUpdated, state="reconnecting", previous="joined", phase=h.phase, cause="reconnecting")
        leavers = self.subset(h.world)  # who leaves unseen cannot come back unseen: that would look continuous
        for who in leavers:
            del h.world[who]
            h.audio.pop(who, None)
            h.video.pop(who, None)
        for who in self.subset(set(IDENTITIES) - set(h.world) - set(leavers) - self.no_return):
            h.world[who] = self.new_sid()
        self.reconnected()

    def synthetic_departures(self) -> list[tuple[type[Record], dict[str, Any]]]:
        """What a full reconnect reports first, in the order measured with rtc 1.2.1 + pipecat 1.14: every remote
        participant gone with no reason (pipecat's pair each; pairs may interleave), *before* ``reconnecting``.
        Their track unsubscribes trail (pipecat delays track handlers): some here, the rest (returned) after
        ``reconnecting``."""
        h = self.h
        unsubscribes: list[tuple[type[Record], dict[str, Any]]] = []
        for who, tracks in sorted(h.audio.items()):
            unsubscribes += [(AudioTrackUnsubscribed, {"participant_id": who, "participant_sid": h.world[who],
                                                       "track_sid": t}) for t in sorted(tracks)]
        for who, by_sid in sorted(h.video.items()):
            unsubscribes += [(VideoTrackUnsubscribed, {"participant_id": who, "participant_sid": h.world[who],
                                                       "track_sid": t, "video_source": s})
                             for t, s in sorted(by_sid.items())]
        h.audio.clear()
        h.video.clear()
        departures: list[tuple[type[Record], dict[str, Any]]] = []
        for who, sid in sorted(h.world.items()):
            departures.append((ParticipantDisconnected, {"participant_id": who, "participant_sid": sid,
                                                         "reason": NO_REASON}))
            departures.append((ParticipantLeft, {"participant_id": who, "participant_sid": sid,
                                                 "disconnect_reason": NO_REASON}))
        if self.draw(st.booleans()):  # all participant_disconnected first, then all participant_left
            departures = departures[::2] + departures[1::2]
        for cls, fields in departures:
            self.emit(cls, **fields)
        h.pending |= set(h.world) & h.present
        h.present -= h.pending
        late = []
        for cls, fields in unsubscribes:
            if self.draw(st.booleans()):
                self.emit(cls, **fields)
            else:
                late.append((cls, fields))
        return late

    def full_reconnect(self) -> None:
        """rtc full reconnect in the real order: synthetic departures, reconnecting, call_state_updated, trailing
        unsubscribes, re-created participants (not every one reported before reconnected), reconnected, and the
        tracks subscribed again around it."""
        h = self.h
        subscribed = [(w, t, "") for w, ts in sorted(h.audio.items()) for t in sorted(ts)]
        subscribed += [(w, t, s) for w, ts in sorted(h.video.items()) for t, s in sorted(ts.items())]
        late = self.synthetic_departures()
        self.emit(Reconnecting)
        self.emit(CallStateUpdated, state="reconnecting", previous="joined", phase=h.phase, cause="reconnecting")
        for cls, fields in late:
            self.emit(cls, **fields)
        leavers = self.subset(h.world)
        for who in leavers:
            del h.world[who]
        for who in self.subset(set(IDENTITIES) - set(h.world) - set(leavers) - self.no_return):
            h.world[who] = self.new_sid()
        reported: list[str] = []
        for who in sorted(h.world):
            h.world[who] = self.new_sid()
            if self.draw(st.booleans()):  # not every re-created participant is reported before reconnected
                self.emit(ParticipantConnected, participant_id=who, participant_sid=h.world[who])
                if not reported:  # pipecat fires first_participant_joined again
                    self.emit(FirstParticipantJoined, participant_id=who, participant_sid=h.world[who])
                reported.append(who)
                if who in h.pending:
                    self.seen_back(who)
                elif who not in h.present:
                    self.seen_join(who)
        again = [(w, t, s) for w, t, s in subscribed if w in h.world and self.draw(st.booleans())]
        early = [sub for sub in again if sub[0] in reported and self.draw(st.booleans())]
        for sub in early:
            self.resubscribe(*sub)
        self.reconnected()
        for sub in again:
            if sub not in early:
                self.resubscribe(*sub)

    def resubscribe(self, who: str, track: str, source: str) -> None:
        h = self.h
        if source:
            h.video.setdefault(who, {})[track] = source
            self.emit(VideoTrackSubscribed, participant_id=who, participant_sid=h.world[who], track_sid=track,
                      video_source=source)
        else:
            h.audio.setdefault(who, set()).add(track)
            self.emit(AudioTrackSubscribed, participant_id=who, participant_sid=h.world[who], track_sid=track)

    def reconnected(self) -> None:
        h = self.h
        self.emit(Reconnected, participants=sorted(h.world))
        self.close_window(sorted(h.world))
        for who in sorted(h.present - set(h.world)):
            self.seen_leave(who)
        for who in sorted(set(h.world) - h.present):
            self.seen_join(who)
        self.sync_phase()

    def bounce(self) -> None:
        """The bot loses the room and the supervisor will come back with a new session."""
        shape = self.draw(st.sampled_from(("lost", "reconnect_failed", "pipeline")))
        if shape == "pipeline":
            self.emit(BeforeDisconnect)
            self.emit(Disconnected, reason="CLIENT_INITIATED", local=True)
        elif shape == "reconnect_failed":
            late = self.synthetic_departures() if self.draw(st.booleans()) else []  # a full reconnect that fails
            self.emit(Reconnecting)
            for cls, fields in late:
                self.emit(cls, **fields)
            self.emit(Disconnected, reason="CONNECTION_TIMEOUT")
        else:
            self.emit(Disconnected, reason="SIGNAL_CLOSE")
        self.h.audio.clear()
        self.h.video.clear()
        self.end_session("pipeline_error" if shape == "pipeline" else "connection_lost", rejoin=True)

    def bot_ends(self) -> None:
        """The session ends for good: the bot leaves, the server removes it, or the room closes."""
        shape = self.draw(st.sampled_from(("left", "drained", "removed", "room_closed")))
        if shape in ("left", "drained"):
            self.emit(BeforeDisconnect)
        reason = {"removed": "PARTICIPANT_REMOVED", "room_closed": "ROOM_DELETED"}.get(shape, "CLIENT_INITIATED")
        self.emit(Disconnected, reason=reason, local=reason == "CLIENT_INITIATED")
        self.end_session(shape, rejoin=False)
        if shape == "room_closed":
            self.h.world.clear()

    def store_outage(self) -> None:
        """The daemon lost Redis for a while and says so in the log: notes that change nothing for anyone."""
        since = self.ts
        self.emit(StoreUnavailable, since=since, detail="redis: connection refused")
        if self.draw(st.booleans()):
            self.emit(StoreRestored, since=since, down_for=self.ts - since)

    def feedback(self) -> None:
        """The transport feeding its own call_state_updated output back into the log."""
        self.emit(CallStateUpdated, state=self.h.state, previous="joining", phase=self.h.phase, cause="connected")

    def actions(self) -> list[str]:
        h = self.h
        if h.bot == "out":
            return ["start"]
        if h.bot == "away":
            return ["rejoin", "rejoin", "join_fails"]
        names = ["data", "data", "stream", "feedback", "resume", "full_reconnect", "bounce", "bot_ends",
                 "store_outage"]
        if len(h.world) < len(IDENTITIES):
            names += ["join"] * 4
        if h.world:
            names += ["leave", "leave", "subscribe", "subscribe"]
        if any(h.audio.values()) or any(h.video.values()):
            names += ["unsubscribe"]
        return names


@st.composite
def valid_room_history(draw: Callable[[st.SearchStrategy[Any]], Any], room: str = "room-a",
                       max_steps: int = 25) -> RoomHistory:
    """A plausible life of one room (seq 1..n, increasing ts) and its expected outcome."""
    sim = _Sim(draw, room)
    for _ in range(draw(st.integers(0, max_steps))):
        getattr(sim, draw(st.sampled_from(sim.actions())))()
    if sim.h.bot == "in":  # end some histories the ways a session ends
        ending = draw(st.sampled_from(("", "bounce", "bot_ends")))
        if ending:
            getattr(sim, ending)()
    if sim.h.bot == "away" and draw(st.booleans()):
        sim.join_fails()
    return sim.h


def room_scenarios(rooms: tuple[str, ...] = ROOMS, max_steps: int = 25) -> st.SearchStrategy[dict[str, RoomHistory]]:
    """``{room: RoomHistory}`` for one to ``len(rooms)`` rooms."""
    chosen = st.lists(st.sampled_from(rooms), min_size=1, unique=True)
    return chosen.flatmap(lambda names: st.tuples(*(valid_room_history(n, max_steps) for n in names))).map(
        lambda histories: {h.room: h for h in histories})


def valid_room_histories(rooms: tuple[str, ...] = ROOMS, max_steps: int = 25,
                         ) -> st.SearchStrategy[dict[str, list[Record]]]:
    """``{room: [records]}``: valid histories for several rooms, each with seq 1..n and increasing ts."""
    return room_scenarios(rooms, max_steps).map(lambda by_room: {r: h.records for r, h in by_room.items()})


@st.composite
def interleaved(draw: Callable[[st.SearchStrategy[Any]], Any], histories: dict[str, list[Record]],
                ) -> list[Record]:
    """One feed holding every room's records, each room's order kept, rooms mixed at random."""
    rnd: random.Random = draw(st.randoms(use_true_random=False))
    queues = {room: list(reversed(records)) for room, records in histories.items() if records}
    merged: list[Record] = []
    while queues:
        room = rnd.choice(sorted(queues))
        merged.append(queues[room].pop())
        if not queues[room]:
            del queues[room]
    return merged
