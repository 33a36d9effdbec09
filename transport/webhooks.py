"""LiveKit webhooks: check that LiveKit sent one, and turn it into a server-view record.

LiveKit signs each webhook: the ``Authorization`` header is a JWT (no ``Bearer``) signed with a key of the server's
``webhook.api_key``, whose ``sha256`` claim is the SHA-256 of the exact body (livekit-api's ``WebhookReceiver``
checks both). The body is the ``WebhookEvent`` protobuf as JSON. :func:`verify_webhook` raises
:class:`WebhookRefused` for anything not signed by our key (the HTTP answer is 401) and :class:`BadWebhook` for a
signed body that is not a webhook event (400); :func:`server_record` maps an event to its record, or ``None`` for
events that are not about a room (egress, ingress) or name no room.
"""

from __future__ import annotations

import time
from typing import Callable

from google.protobuf.json_format import ParseError
from livekit import api
from livekit.protocol import models
from livekit.protocol.webhook import WebhookEvent

from eventstore.records import (
    LkParticipantConnectionAborted, LkParticipantJoined, LkParticipantLeft, LkRoomFinished, LkRoomStarted,
    LkTrackPublished, LkTrackUnpublished, ServerRecord,
)

MAX_BODY = 256 * 1024  # bytes; LiveKit's webhook bodies are a few kB


class WebhookRefused(ValueError):
    """The webhook is not signed by a key we know, or its body is not the one signed."""


class BadWebhook(ValueError):
    """A signed body that is not a LiveKit webhook event."""


def verify_webhook(body: bytes, authorization: str, api_key: str, api_secret: str) -> WebhookEvent:
    """The event in ``body`` if ``authorization`` is LiveKit's signature of it with ``api_key``/``api_secret``."""
    if not authorization:
        raise WebhookRefused("no Authorization header")
    if len(body) > MAX_BODY:
        raise BadWebhook(f"body of {len(body)} bytes (at most {MAX_BODY})")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadWebhook("body is not UTF-8") from None
    token = authorization.removeprefix("Bearer ").strip()
    verifier = api.TokenVerifier(api_key, api_secret)
    receiver = api.WebhookReceiver(verifier)
    try:
        verifier.verify(token)  # signature, expiry, issuer: refused before the body is looked at
    except Exception as exc:  # noqa: BLE001 - the JWT library raises many types; all mean "not signed by us"
        raise WebhookRefused(f"bad signature: {type(exc).__name__}") from None
    try:
        return receiver.receive(text, token)
    except ParseError as exc:
        raise BadWebhook(f"not a webhook event: {exc}"[:200]) from None
    except Exception as exc:  # noqa: BLE001 - livekit-api raises plain Exception for a missing/mismatched hash
        raise WebhookRefused(f"body does not match its signature: {exc}"[:200]) from None


def _lower(name: str) -> str:
    return name.lower()


def _participant(event: WebhookEvent) -> dict[str, object]:
    p = event.participant
    return {"participant_id": p.identity, "participant_sid": p.sid,
            "kind": _lower(models.ParticipantInfo.Kind.Name(p.kind)) if p.kind in _KINDS else str(p.kind),
            "joined_at": float(p.joined_at_ms) / 1000 if p.joined_at_ms else float(p.joined_at)}


def _reason(event: WebhookEvent) -> dict[str, object]:
    r = event.participant.disconnect_reason
    return {"reason": models.DisconnectReason.Name(r) if r in _REASONS else str(r)}


def _track(event: WebhookEvent) -> dict[str, object]:
    t = event.track
    return {"track_sid": t.sid,
            "track_type": _lower(models.TrackType.Name(t.type)) if t.type in _TRACK_TYPES else str(t.type),
            "source": _lower(models.TrackSource.Name(t.source)) if t.source in _SOURCES else str(t.source)}


_KINDS = frozenset(models.ParticipantInfo.Kind.values())
_REASONS = frozenset(models.DisconnectReason.values())
_TRACK_TYPES = frozenset(models.TrackType.values())
_SOURCES = frozenset(models.TrackSource.values())

# webhook event name -> (record type, what it takes from the event)
_EVENTS: dict[str, tuple[type[ServerRecord], tuple[Callable[[WebhookEvent], dict[str, object]], ...]]] = {
    "room_started": (LkRoomStarted, ()),
    "room_finished": (LkRoomFinished, ()),
    "participant_joined": (LkParticipantJoined, (_participant,)),
    "participant_left": (LkParticipantLeft, (_participant, _reason)),
    "participant_connection_aborted": (LkParticipantConnectionAborted, (_participant, _reason)),
    "track_published": (LkTrackPublished, (_participant, _track)),
    "track_unpublished": (LkTrackUnpublished, (_participant, _track)),
}
SERVER_EVENTS = tuple(_EVENTS)


def server_record(event: WebhookEvent, producer: str) -> ServerRecord | None:
    """The record of a room event (``None`` for events of other kinds, or without a room name or event id)."""
    spec = _EVENTS.get(event.event)
    if spec is None or not event.room.name or not event.id:
        return None
    cls, parts = spec
    fields: dict[str, object] = {}
    for part in parts:
        fields.update(part(event))
    return cls(room=event.room.name, session="", ts=time.time(), producer=producer, event_id=event.id,
               server_ts=float(event.created_at), room_sid=event.room.sid, **fields)
