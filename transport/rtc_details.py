"""What LiveKit knows about an event and pipecat drops, captured from the rtc ``Room`` as events happen.

Our listeners are registered on the rtc room after pipecat's and run synchronously inside rtc's emit, before
pipecat's handler task for the same event runs. They put the details (participant SID, real disconnect
reason, track SID and source, data topic and kind) where the recording transport finds them when pipecat calls
the matching event handler with only an identity.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

from livekit import rtc


def enum_name(enum: object, value: int, prefix: str = "") -> str:
    try:
        name = enum.Name(value)  # type: ignore[attr-defined]
    except (ValueError, AttributeError):
        return str(value)
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


@dataclass(frozen=True, slots=True)
class TrackInfo:
    track_sid: str
    source: str  # camera, screen_share, microphone, ...


@dataclass(frozen=True, slots=True)
class DataInfo:
    sender: str | None
    participant_sid: str
    topic: str
    reliable: bool
    size: int


def track_source(publication: rtc.RemoteTrackPublication) -> str:
    return enum_name(rtc.TrackSource, publication.source, "SOURCE_").lower()


class RtcDetails:
    """Per-transport store of details, consumed in order per identity/kind."""

    def __init__(self) -> None:
        self.sids: dict[str, str] = {}
        self.kinds: dict[str, str] = {}
        self.reasons: dict[str, str] = {}
        self.subscribed: dict[tuple[str, str], deque[TrackInfo]] = defaultdict(deque)
        self.unsubscribed: dict[tuple[str, str], deque[TrackInfo]] = defaultdict(deque)
        self.data: deque[DataInfo] = deque(maxlen=4096)
        self.bot_disconnect_reason: str = ""

    def attach(self, room: rtc.Room) -> None:
        room.on("participant_connected", self._participant_connected)
        room.on("participant_disconnected", self._participant_disconnected)
        room.on("track_subscribed", self._track_subscribed)
        room.on("track_unsubscribed", self._track_unsubscribed)
        room.on("data_received", self._data_received)
        room.on("disconnected", self._disconnected)

    def remember(self, participant: rtc.RemoteParticipant) -> None:
        self.sids[participant.identity] = participant.sid
        self.kinds[participant.identity] = enum_name(rtc.ParticipantKind, participant.kind,
                                                     "PARTICIPANT_KIND_").lower()

    def _participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        self.remember(participant)
        self.reasons.pop(participant.identity, None)

    def _participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        self.sids[participant.identity] = participant.sid
        self.reasons[participant.identity] = enum_name(rtc.DisconnectReason, participant.disconnect_reason or 0)

    def _track_subscribed(self, track: rtc.Track, publication: rtc.RemoteTrackPublication,
                          participant: rtc.RemoteParticipant) -> None:
        kind = "audio" if track.kind == rtc.TrackKind.KIND_AUDIO else "video"
        self.subscribed[(participant.identity, kind)].append(TrackInfo(publication.sid, track_source(publication)))

    def _track_unsubscribed(self, track: rtc.Track, publication: rtc.RemoteTrackPublication,
                            participant: rtc.RemoteParticipant) -> None:
        kind = "audio" if track.kind == rtc.TrackKind.KIND_AUDIO else "video"
        self.unsubscribed[(participant.identity, kind)].append(TrackInfo(publication.sid, track_source(publication)))

    def _data_received(self, packet: rtc.DataPacket) -> None:
        """A data packet's details. Its sender is ``None`` (for pipecat and in our record) in two cases that the
        bot cannot tell apart: a server SDK sent it (no identity on the wire), or the bot's room did not know the
        sender yet. LiveKit does send the sender's identity with every participant's packet, but rtc 1.2.1 loses
        it below Python: the Rust room (rust-sdks ``livekit/src/room/mod.rs``, ``RoomSession::handle_data``, since
        rust-sdks#757) looks the identity up among known participants and dispatches ``participant: None`` when it
        finds nobody, and the FFI (``livekit-ffi/src/server/room.rs``, ``RoomEvent::DataReceived``) then sends
        ``participant_identity=""``; ``livekit/rtc/room.py`` (``_on_room_event``, ``data_packet_received``) builds
        ``DataPacket(participant=None)`` from that. It happens to every packet a caller who publishes no track
        sends in its first seconds: livekit-server (``pkg/rtc/room.go``) batches participant updates of
        non-publishers and sends them every 3 s (``subscriberUpdateInterval``), while data is relayed at once.
        Data *streams* keep the identity (their "opened" event carries it): :mod:`transport.streams`."""
        sender = packet.participant.identity if packet.participant else None
        sid = packet.participant.sid if packet.participant else ""
        self.data.append(DataInfo(sender, sid, packet.topic or "", packet.kind == rtc.DataPacketKind.KIND_RELIABLE,
                                  len(packet.data)))

    def _disconnected(self, reason: int = 0) -> None:
        self.bot_disconnect_reason = enum_name(rtc.DisconnectReason, reason or 0)

    # --- consumers of the details -------------------------------------------------------------------------

    def track(self, identity: str, kind: str, subscribed: bool) -> TrackInfo:
        queue = (self.subscribed if subscribed else self.unsubscribed).get((identity, kind))
        return queue.popleft() if queue else TrackInfo("", "")

    def data_info(self, sender: str | None, size: int) -> DataInfo:
        """The details of the oldest packet from ``sender`` with ``size`` bytes (packets are handled in order)."""
        for i, info in enumerate(self.data):
            if info.sender == sender and info.size == size:
                del self.data[i]
                return info
        return DataInfo(sender, self.sids.get(sender or "", ""), "", True, size)
