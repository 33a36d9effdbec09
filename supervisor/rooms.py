"""Validation of room names and identities as LiveKit accepts them."""

from __future__ import annotations

from .errors import InvalidRoomName

MAX_NAME_BYTES = 1024


def check_room_name(name: object) -> str:
    """Return ``name`` if LiveKit would accept it as a room name, else raise :class:`InvalidRoomName`.

    Any non-empty UTF-8 string without control characters is fine (spaces, unicode, ``:``, ``{}``, ``*``);
    keys are built from it safely by :mod:`eventstore.keys`.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidRoomName(f"room name must be a non-empty string, got {name!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidRoomName(f"room name {name!r} contains control characters")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRoomName(f"room name {name!r} is not valid unicode text") from None
    if size > MAX_NAME_BYTES:
        raise InvalidRoomName(f"room name is {size} bytes long; at most {MAX_NAME_BYTES} are allowed")
    return name
