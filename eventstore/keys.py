"""Every Redis key room-supervisor uses is built here, and only here.

Room names and identities can be anything LiveKit accepts: spaces, unicode, ``:``, ``{``, ``}``, ``*``,
hundreds of characters. Inside a key a room name is percent-encoded (UTF-8, everything outside
``[A-Za-z0-9._~-]`` becomes ``%XX``), which is injective (two names never share a key), keeps readable names
readable, and never contains ``{``, ``}`` or ``:``. All per-room keys carry the encoded name as their Redis
Cluster hash tag, so a room's stream, meta, lease and states share one slot and one script can touch them
together.

Layout (prefix ``rs`` by default)::

    rs:room:{<room>}:events          STREAM  the room's event log, source of truth
    rs:room:{<room>}:meta            HASH    seq (last sequence), last (last entry id), batch (last batch token)
    rs:room:{<room>}:lease           HASH    owner, epoch (fencing), expires (ms); see supervisor.daemon.leases
    rs:room:{<room>}:state:<proj>    HASH    state (JSON), seq, id: a projection's state and its checkpoint
    rs:room:{<room>}:once            HASH    once id -> seq: records appended exactly once (LiveKit webhook event ids)
    rs:room:{<room>}:archiving       STRING  the archiver working on the room (a lock with a TTL)
    rs:room:{<room>}:archived        STRING  an archived room's last seq (all else of it is gone from Redis)
    rs:feed:<n>                      STREAM  notifications "room R has events up to seq S" for partition n
    rs:feed:partitions               STRING  the partition count, fixed by the first writer
    rs:rooms                         ZSET    every room that has events (member: raw name, score: first seen)
    rs:dead                          STREAM  dead letters: entries that could not be decoded
    rs:desired                       HASH    rooms to join -> desired-room JSON (pipeline, ...)
    rs:claimable                     ZSET    desired rooms by when they may be claimed (ms, Redis time):
                                             free ones since they were desired, held ones when their lease expires
    rs:control                       STREAM  join/leave announcements that wake daemons early
    rs:daemon:<id>                   STRING  daemon heartbeat (JSON), with a TTL
    rs:daemons                       ZSET    daemon id -> when its heartbeat expires (ms): who to read, without SCAN
    rs:consumers:<proj>              ZSET    live consumer instances of a projection (score: heartbeat ms)
    rs:plock:<proj>:<n>              STRING  which consumer instance owns feed partition n
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from urllib.parse import quote, unquote

DEFAULT_PREFIX = "rs"
DEFAULT_PARTITIONS = 16

_SAFE = "._~-"


class InvalidKeyPart(ValueError):
    """A name cannot be used to build a key (empty, or not a string)."""


def encode_name(name: str) -> str:
    """Percent-encode a room name (or identity) for use inside a key. Injective and reversible."""
    if not isinstance(name, str) or name == "":
        raise InvalidKeyPart(f"a room name must be a non-empty string, got {name!r}")
    try:
        return quote(name, safe=_SAFE, encoding="utf-8", errors="strict")
    except UnicodeEncodeError:
        raise InvalidKeyPart(f"a room name must be valid unicode text, got {name!r}") from None


def decode_name(encoded: str) -> str:
    """Inverse of :func:`encode_name`."""
    return unquote(encoded, encoding="utf-8", errors="strict")


def partition_of(room: str, partitions: int) -> int:
    """The feed partition of a room: stable across processes and Python versions (CRC-32 of UTF-8)."""
    return zlib.crc32(room.encode("utf-8")) % partitions


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds every key under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "{} \n\r\t"):
            raise InvalidKeyPart(f"invalid key prefix {self.prefix!r}")

    # per room (one Cluster slot per room)
    def room_base(self, room: str) -> str:
        return f"{self.prefix}:room:{{{encode_name(room)}}}"

    def events(self, room: str) -> str:
        return self.room_base(room) + ":events"

    def meta(self, room: str) -> str:
        return self.room_base(room) + ":meta"

    def lease(self, room: str) -> str:
        return self.room_base(room) + ":lease"

    def once(self, room: str) -> str:
        return self.room_base(room) + ":once"

    def archiving(self, room: str) -> str:
        return self.room_base(room) + ":archiving"

    def archived(self, room: str) -> str:
        return self.room_base(room) + ":archived"

    def state(self, room: str, projection: str) -> str:
        if not projection or not projection.replace("-", "").replace("_", "").isalnum():
            raise InvalidKeyPart(f"invalid projection name {projection!r}")
        return self.room_base(room) + f":state:{projection}"

    def room_from_events_key(self, key: str) -> str:
        """The room name of an ``events`` key built by this object."""
        head = f"{self.prefix}:room:{{"
        if not (key.startswith(head) and key.endswith("}:events")):
            raise InvalidKeyPart(f"not an events key: {key!r}")
        return decode_name(key[len(head) : -len("}:events")])

    # across rooms
    def feed(self, partition: int) -> str:
        return f"{self.prefix}:feed:{int(partition)}"

    def feed_partitions(self) -> str:
        return f"{self.prefix}:feed:partitions"

    def rooms(self) -> str:
        return f"{self.prefix}:rooms"

    def dead(self) -> str:
        return f"{self.prefix}:dead"

    def desired(self) -> str:
        return f"{self.prefix}:desired"

    def claimable(self) -> str:
        return f"{self.prefix}:claimable"

    def control(self) -> str:
        return f"{self.prefix}:control"

    def daemon(self, daemon_id: str) -> str:
        return f"{self.prefix}:daemon:{encode_name(daemon_id)}"

    def daemon_pattern(self) -> str:
        return f"{self.prefix}:daemon:*"

    def daemons(self) -> str:
        return f"{self.prefix}:daemons"

    def consumers(self, projection: str) -> str:
        return f"{self.prefix}:consumers:{projection}"

    def partition_lock(self, projection: str, partition: int) -> str:
        return f"{self.prefix}:plock:{projection}:{int(partition)}"
