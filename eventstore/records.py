"""Typed event records: one msgspec Struct per transport event, with a pinned tag.

Every record shares an envelope (``seq``, ``v``, ``room``, ``session``, ``ts``, ``producer``, ``epoch``).
The tag written to the ``type`` field is pinned explicitly and equals the documented pipecat event name
without its ``on_`` prefix; it never depends on a class name.

Evolution rule: records change only by *adding* fields that have defaults. A reader built against an older
schema ignores unknown fields; a newer reader fills defaults for missing ones. ``SCHEMA_VERSION`` is bumped
when fields are added so consumers can tell which writer produced an entry.
"""

from __future__ import annotations

from typing import Final, Union

import msgspec

SCHEMA_VERSION: Final = 1


class Record(msgspec.Struct, tag_field="type", kw_only=True, frozen=True):
    """The envelope shared by every record.

    ``seq`` is assigned by Redis when the record is appended (the per-room append script); a record that was
    never appended has ``seq == 0``. ``ts`` is wall-clock Unix time in seconds at the producer. ``epoch`` is
    the fencing epoch of the room lease the producer held.
    """

    seq: int = 0
    v: int = SCHEMA_VERSION
    room: str
    session: str
    ts: float
    producer: str = ""
    epoch: int = 0


# --- the 13 events documented for pipecat's LiveKitTransport --------------------------------------------


class Connected(Record, tag="connected", frozen=True, kw_only=True):
    """The bot joined the room (``on_connected``). ``identity``/``participant_sid`` are the bot's own;
    ``participants`` lists the identities of the remote participants already in the room at that moment
    (a snapshot that lets consumers tell who stayed while the bot was away)."""

    identity: str = ""
    participant_sid: str = ""
    participants: list[str] = []


class Disconnected(Record, tag="disconnected", frozen=True, kw_only=True):
    """The bot left the room (``on_disconnected``).

    ``reason`` is LiveKit's ``DisconnectReason`` name (``CLIENT_INITIATED``, ``ROOM_DELETED``, ...), which
    pipecat drops; ``local`` is true when the bot itself chose to leave.
    """

    reason: str = ""
    local: bool = False


class BeforeDisconnect(Record, tag="before_disconnect", frozen=True, kw_only=True):
    """The bot is about to leave on purpose (``on_before_disconnect``, synchronous)."""


class CallStateUpdated(Record, tag="call_state_updated", frozen=True, kw_only=True):
    """The call-state machine changed state (``on_call_state_updated(transport, state)``).

    ``state`` is the Daily-compatible string handed to user handlers (``joining``, ``joined``, ``leaving``,
    ``left``, plus ``reconnecting`` and ``failed``); ``phase`` is the call's phase (``waiting``, ``active``,
    ...); ``cause`` names the record type that caused the transition.
    """

    state: str
    previous: str = ""
    phase: str = ""
    cause: str = ""


class FirstParticipantJoined(Record, tag="first_participant_joined", frozen=True, kw_only=True):
    participant_id: str
    participant_sid: str = ""


class ParticipantConnected(Record, tag="participant_connected", frozen=True, kw_only=True):
    participant_id: str
    participant_sid: str = ""
    kind: str = ""


class ParticipantDisconnected(Record, tag="participant_disconnected", frozen=True, kw_only=True):
    """``reason`` is LiveKit's ``participant.disconnect_reason`` name, which pipecat drops."""

    participant_id: str
    participant_sid: str = ""
    reason: str = ""


class ParticipantLeft(Record, tag="participant_left", frozen=True, kw_only=True):
    """``reason`` is what user handlers receive (pipecat: always ``"disconnected"``); ``disconnect_reason``
    is what LiveKit really said."""

    participant_id: str
    reason: str = "disconnected"
    participant_sid: str = ""
    disconnect_reason: str = ""


class AudioTrackSubscribed(Record, tag="audio_track_subscribed", frozen=True, kw_only=True):
    participant_id: str
    participant_sid: str = ""
    track_sid: str = ""


class AudioTrackUnsubscribed(Record, tag="audio_track_unsubscribed", frozen=True, kw_only=True):
    participant_id: str
    participant_sid: str = ""
    track_sid: str = ""


class VideoTrackSubscribed(Record, tag="video_track_subscribed", frozen=True, kw_only=True):
    """``video_source`` is LiveKit's track source (``camera``, ``screen_share``, ...)."""

    participant_id: str
    participant_sid: str = ""
    track_sid: str = ""
    video_source: str = ""


class VideoTrackUnsubscribed(Record, tag="video_track_unsubscribed", frozen=True, kw_only=True):
    participant_id: str
    participant_sid: str = ""
    track_sid: str = ""
    video_source: str = ""


class DataReceived(Record, tag="data_received", frozen=True, kw_only=True):
    """A data packet (``on_data_received(transport, data, participant_id)``).

    ``participant_id`` is ``None`` when LiveKit handed over no sender: a packet a server SDK or a hidden
    participant sent, or one from a participant the bot's room did not know yet (rtc 1.2.1 drops the sender's
    identity then; a caller who publishes no track is announced to the bot up to 3 s after joining, so its first
    packets arrive this way). ``data`` is stored in the stream entry as its own raw field (text reads as text in
    redis-cli, bytes stay exact), not inside the JSON text.
    """

    participant_id: str | None = None
    data: bytes = b""
    participant_sid: str = ""
    topic: str = ""
    reliable: bool = True


# --- what LiveKit knows and pipecat does not surface; what the supervisor adds -----------------------------


class TextStreamReceived(Record, tag="text_stream_received", frozen=True, kw_only=True):
    """A LiveKit text stream ended (``send_text``/``stream_text``; e.g. topic ``lk.chat`` for chat,
    ``lk.transcription`` for transcripts). Written when the stream ends, so a long one lands after records of
    things that happened while it ran; ``opened_at`` is when its header arrived.

    ``participant_id`` is the sender's identity from the stream header (present even when the bot's room does not
    know the sender yet; ``None`` when LiveKit gave none: a hidden participant). livekit-server writes the real
    sender's identity there, except for an agent's text stream that names another participant (a transcript of
    that participant's speech): it keeps that identity and sets ``generated``. ``text`` is the whole text, or its
    first ``max_stream_bytes`` bytes (UTF-8, cut on a character boundary) when ``truncated``; ``size`` is always
    the full size in UTF-8 bytes. ``complete`` is false when the stream ended abnormally; ``error`` says why, in
    rtc's words (the sender aborted it or left mid-stream, text that is not UTF-8, the bot disconnected) or
    ``the bot left`` (still open when the session ended). ``attributes`` include the trailer's; ``reply_to``
    and ``attachments`` are stream ids this message replies to or carries (byte streams).
    """

    participant_id: str | None = None
    participant_sid: str = ""
    topic: str = ""
    stream_id: str = ""
    text: str = ""
    size: int = 0
    truncated: bool = False
    complete: bool = True
    error: str = ""
    mime_type: str = ""
    attributes: dict[str, str] = {}
    reply_to: str = ""
    attachments: list[str] = []
    generated: bool = False
    opened_at: float = 0.0


class ByteStreamReceived(Record, tag="byte_stream_received", frozen=True, kw_only=True):
    """A LiveKit byte stream ended (``send_file``/``send_bytes``/``stream_bytes``). Fields as in
    :class:`TextStreamReceived`; ``name`` is the file name the sender gave, ``data`` the bytes (their first
    ``max_stream_bytes`` when ``truncated``; base64 inside the JSON text), ``declared_size`` the size the sender
    announced in the header (0 when it did not)."""

    participant_id: str | None = None
    participant_sid: str = ""
    topic: str = ""
    stream_id: str = ""
    name: str = ""
    mime_type: str = ""
    data: bytes = b""
    size: int = 0
    declared_size: int = 0
    truncated: bool = False
    complete: bool = True
    error: str = ""
    attributes: dict[str, str] = {}
    opened_at: float = 0.0


class Reconnecting(Record, tag="reconnecting", frozen=True, kw_only=True):
    """The bot's connection is being recovered (rtc ``reconnecting``)."""


class Reconnected(Record, tag="reconnected", frozen=True, kw_only=True):
    """The bot's connection was recovered (rtc ``reconnected``). ``participants`` is the snapshot of remote
    identities in the room after recovery."""

    participants: list[str] = []


class SessionStarted(Record, tag="session_started", frozen=True, kw_only=True):
    """A session (one join of a room) starts. ``attempt`` counts rejoins of the same desired room (0 = first);
    ``cause`` says why this session exists (``join``, ``dispatch``: LiveKit's agent dispatch gave the room to this
    daemon, ``rejoin``: LiveKit said come back, or a dispatched room's daemon died, ``restart``, ``takeover``).
    ``job``/``dispatch`` are the LiveKit agent job and dispatch ids of a dispatched room."""

    identity: str = ""
    pipeline: str = ""
    attempt: int = 0
    cause: str = ""
    job: str = ""
    dispatch: str = ""


class SessionEnded(Record, tag="session_ended", frozen=True, kw_only=True):
    """A session ends. ``reason`` is one word (``left``, ``drained``, ``room_closed``, ``room_deleted``,
    ``removed``, ``duplicate_identity``, ``pipeline_error``, ``connection_lost``, ``join_failed``,
    ``cancelled``, ``restart_budget_exhausted``, ``failed``); ``rejoin`` says whether the supervisor will join
    again; ``detail`` is free text for people."""

    reason: str = ""
    rejoin: bool = False
    detail: str = ""


class StoreUnavailable(Record, tag="store_unavailable", frozen=True, kw_only=True):
    """The daemon cannot reach the event store (Redis) since ``since`` (Unix time). The session goes on;
    records from here on wait in the daemon's memory or spool and reach the stream late (their ``ts`` is when
    they happened). ``detail`` says what failed."""

    since: float = 0.0
    detail: str = ""


class StoreRestored(Record, tag="store_restored", frozen=True, kw_only=True):
    """The event store answers again: the outage that began at ``since`` lasted ``down_for`` seconds, and the
    room's lease was re-asserted with the same epoch."""

    since: float = 0.0
    down_for: float = 0.0


# --- the LiveKit server's own view, from its webhooks (recorded by the daemon that receives them) ---------------


class ServerRecord(Record, frozen=True, kw_only=True):
    """A LiveKit webhook, as the server saw it. ``event_id`` is the webhook's id (``EV_...``; the record is in the
    stream once per id, however often LiveKit sent it), ``server_ts`` the server's time of the event (Unix seconds,
    LiveKit gives whole seconds), ``room_sid`` the room's sid. ``session`` is empty: no bot session wrote it."""

    event_id: str = ""
    server_ts: float = 0.0
    room_sid: str = ""


class LkRoomStarted(ServerRecord, tag="lk_room_started", frozen=True, kw_only=True):
    """The server created the room (webhook ``room_started``)."""


class LkRoomFinished(ServerRecord, tag="lk_room_finished", frozen=True, kw_only=True):
    """The server closed the room (webhook ``room_finished``)."""


class ServerParticipantRecord(ServerRecord, frozen=True, kw_only=True):
    """A participant as the server knows it: ``participant_id`` its identity, ``kind`` LiveKit's kind in lower case
    (``standard``, ``agent``, ``sip``, ``ingress``, ``egress``), ``joined_at`` when it joined (server time)."""

    participant_id: str = ""
    participant_sid: str = ""
    kind: str = ""
    joined_at: float = 0.0


class LkParticipantJoined(ServerParticipantRecord, tag="lk_participant_joined", frozen=True, kw_only=True):
    """A participant became active in the room (webhook ``participant_joined``), whether the bot saw it or not."""


class LkParticipantLeft(ServerParticipantRecord, tag="lk_participant_left", frozen=True, kw_only=True):
    """A participant left (webhook ``participant_left``); ``reason`` is LiveKit's ``DisconnectReason`` name."""

    reason: str = ""


class LkParticipantConnectionAborted(ServerParticipantRecord, tag="lk_participant_connection_aborted", frozen=True,
                                     kw_only=True):
    """A participant's connection was given up before it became active (webhook
    ``participant_connection_aborted``); ``reason`` as in :class:`LkParticipantLeft`."""

    reason: str = ""


class ServerTrackRecord(ServerParticipantRecord, frozen=True, kw_only=True):
    """A track of a participant: ``track_sid``, ``track_type`` (``audio``, ``video``, ``data``), ``source``
    (``microphone``, ``camera``, ``screen_share``, ...), all lower case."""

    track_sid: str = ""
    track_type: str = ""
    source: str = ""


class LkTrackPublished(ServerTrackRecord, tag="lk_track_published", frozen=True, kw_only=True):
    """A participant published a track (webhook ``track_published``)."""


class LkTrackUnpublished(ServerTrackRecord, tag="lk_track_unpublished", frozen=True, kw_only=True):
    """A participant unpublished a track (webhook ``track_unpublished``)."""


AnyRecord = Union[
    Connected,
    Disconnected,
    BeforeDisconnect,
    CallStateUpdated,
    FirstParticipantJoined,
    ParticipantConnected,
    ParticipantDisconnected,
    ParticipantLeft,
    AudioTrackSubscribed,
    AudioTrackUnsubscribed,
    VideoTrackSubscribed,
    VideoTrackUnsubscribed,
    DataReceived,
    TextStreamReceived,
    ByteStreamReceived,
    Reconnecting,
    Reconnected,
    SessionStarted,
    SessionEnded,
    StoreUnavailable,
    StoreRestored,
    LkRoomStarted,
    LkRoomFinished,
    LkParticipantJoined,
    LkParticipantLeft,
    LkParticipantConnectionAborted,
    LkTrackPublished,
    LkTrackUnpublished,
]

RECORD_TYPES: Final[tuple[type[Record], ...]] = AnyRecord.__args__  # type: ignore[attr-defined]

TAGS: Final[dict[str, type[Record]]] = {cls.__struct_config__.tag: cls for cls in RECORD_TYPES}

DOCUMENTED_EVENTS: Final[tuple[str, ...]] = (
    "connected",
    "disconnected",
    "before_disconnect",
    "call_state_updated",
    "first_participant_joined",
    "participant_connected",
    "participant_disconnected",
    "participant_left",
    "audio_track_subscribed",
    "audio_track_unsubscribed",
    "video_track_subscribed",
    "video_track_unsubscribed",
    "data_received",
)


SERVER_RECORD_TYPES: Final[tuple[type[Record], ...]] = tuple(
    cls for cls in RECORD_TYPES if issubclass(cls, ServerRecord))


def tag_of(record: Record) -> str:
    """The pinned tag of a record (its ``type`` field)."""
    return type(record).__struct_config__.tag  # type: ignore[return-value]
