"""The state types of the ``participants`` projection (msgspec Structs) and the constants both reducers share.

The reducer is :mod:`eventstore.projections.participants`; the rules are in its docstring and in
``docs/callstate.md``. Everything here is re-exported from ``participants``.
"""

from __future__ import annotations

from typing import Final

import msgspec

from ..records import (
    SERVER_RECORD_TYPES, AudioTrackUnsubscribed, ByteStreamReceived, CallStateUpdated, ParticipantDisconnected,
    ParticipantLeft, Reconnecting, StoreRestored, StoreUnavailable, TextStreamReceived, VideoTrackUnsubscribed,
)

ANOMALY_LIMIT: Final = 20  # both reducers keep this many of the latest anomalies
VISIT_LIMIT: Final = 1000  # server-view visits kept per room; later ones are counted in ServerView.dropped
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
# LiveKit departure reasons that do not say anything: a full reconnect of the bot reports every remote participant
# gone with one of these *before* its ``reconnecting``, so such a departure is only *suspect* until the next record.
SUSPECT_REASONS: Final = frozenset({"", "UNKNOWN_REASON"})
# Records that leave suspect departures undecided (both reducers): the rest of a departure's pair, the
# unsubscriptions that follow it, the call-state echo, the daemon's notes about the event store, which say
# nothing about people, and text/byte streams, which are written when a stream ends (by a task of their own, not
# in the rtc event order), so where they land says nothing about who is in the room. The server's records
# (webhooks) are written by whichever daemon LiveKit posted to, at no fixed place in the bot's order, and change
# only the server view. ``Reconnecting`` decides them itself.
KEEPS_SUSPECTS: Final = frozenset({ParticipantDisconnected, ParticipantLeft, AudioTrackUnsubscribed,
                                   VideoTrackUnsubscribed, CallStateUpdated, Reconnecting, StoreUnavailable,
                                   StoreRestored, TextStreamReceived, ByteStreamReceived, *SERVER_RECORD_TYPES})


def livekit_reason(record: ParticipantDisconnected | ParticipantLeft) -> str:
    """What LiveKit said about a departure (``participant_left.reason`` is pipecat's placeholder)."""
    return record.disconnect_reason if isinstance(record, ParticipantLeft) else record.reason


def is_suspect(record: ParticipantDisconnected | ParticipantLeft) -> bool:
    """Whether a departure gives no reason, so it may be a full reconnect's synthetic one."""
    return livekit_reason(record) in SUSPECT_REASONS


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
    """A departure not decided yet: a *suspect* one (no reason, no ``reconnecting`` after it yet) or a
    *provisional* one inside a reconnect window. ``who`` is the presence it may resume (tracks dropped), ``at``
    and ``reason`` are what the departure said (used if it turns out real), ``seen`` its ``SEEN_*`` bits."""
    who: Present
    at: float
    reason: str = ""
    seen: int = 0


class PersonStats(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Per identity, over the room's life. ``seconds`` sums closed presence intervals only. ``messages`` and
    ``bytes`` count data packets; ``text_streams``/``byte_streams`` count LiveKit data streams the person sent,
    ``text_bytes``/``byte_stream_bytes`` their full sizes (UTF-8 bytes for text; truncated ones included)."""
    joins: int = 0
    rejoins: int = 0
    messages: int = 0
    bytes: int = 0
    seconds: float = 0.0
    text_streams: int = 0
    text_bytes: int = 0
    byte_streams: int = 0
    byte_stream_bytes: int = 0


class RoomCounters(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    joins: int = 0
    rejoins: int = 0
    leaves: int = 0
    data_messages: int = 0  # all data packets, including those with no sender
    data_bytes: int = 0
    # packets with no sender: sent by a server SDK, or by someone the bot's room did not know yet (rtc then drops
    # the sender's identity; see ``DataReceived``)
    server_messages: int = 0
    server_bytes: int = 0
    text_streams: int = 0  # text streams (any sender), their full sizes in UTF-8 bytes
    text_bytes: int = 0
    byte_streams: int = 0  # byte streams (any sender), their full sizes
    byte_stream_bytes: int = 0
    incomplete_streams: int = 0  # streams of either kind that ended abnormally (aborted, sender or bot left)
    tracks_subscribed: int = 0
    tracks_unsubscribed: int = 0
    sessions: int = 0
    reconnects: int = 0
    bot_disconnects: int = 0
    peak_present: int = 0
    anomalies: int = 0


class Visit(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One connection of a participant as the LiveKit server reported it (webhooks), keyed by participant sid.
    Times are the server's (whole seconds); ``left_at`` is None while LiveKit has not said it ended; ``aborted``:
    the connection was given up before it became active; ``tracks`` counts the tracks it published."""
    identity: str
    sid: str
    kind: str = ""
    joined_at: float = 0.0
    left_at: float | None = None
    reason: str = ""
    aborted: bool = False
    tracks: int = 0


class ServerView(msgspec.Struct, frozen=True, kw_only=True):
    """What the LiveKit server said about the room (its webhooks, ``lk_*`` records): when it started and finished,
    and every connection, including people the bot never saw (LiveKit tells a subscriber about non-publishers in
    batches, up to 3 s late; who came and went within that never reaches the bot). ``dropped`` counts visits not
    kept beyond ``VISIT_LIMIT``; ``events`` the server records applied."""
    room_sid: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    visits: dict[str, Visit] = {}
    dropped: int = 0
    events: int = 0


class ParticipantsState(msgspec.Struct, frozen=True, kw_only=True):
    """``bot`` is ``idle``, ``joining``, ``connected``, ``reconnecting`` or ``away``; ``window_ts`` is set while
    a window is open and ``window_reason`` is what people absent from the closing snapshot left with.

    Every identity is in at most one of ``present`` (in the room), ``suspect`` (reported gone with no reason;
    decided by the next record), ``pending`` (gone inside a reconnect window; decided by its snapshot) and
    ``left`` (gone). Suspect and pending people are neither present nor left yet, their presence keeps counting
    (:func:`~eventstore.projections.participants.seconds_present`) and ``counters.leaves`` does not include
    them: ``joins - leaves == len(present) + len(suspect) + len(pending)``."""
    room: str
    last_seq: int = 0
    last_ts: float = 0.0
    session: str = ""
    bot: str = "idle"
    window_ts: float | None = None
    window_reason: str = ""
    present: dict[str, Present] = {}
    suspect: dict[str, Pending] = {}
    pending: dict[str, Pending] = {}
    left: dict[str, Departure] = {}
    people: dict[str, PersonStats] = {}
    counters: RoomCounters = RoomCounters()
    anomalies: tuple[Anomaly, ...] = ()
    server: ServerView = ServerView()
