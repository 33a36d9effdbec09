"""What Redis knows about rooms, read in one pipelined round trip: whether a room exists at all, where its
stream ends, where each projection's materialized state stands against it (and whether a consumer is running
to catch it up), and the last record of each room that ``rooms`` lists.

Where a stream ends: the append script keeps the last sequence number and the last entry id in the room's meta
hash (``seq``, ``last``); a stream written by someone else has no meta hash, and then its last entry says. A
materialized state is caught up when its checkpoint's entry id has reached the stream's last entry (like the
consumer's own test: a record this version cannot decode is passed over, so its seq is never reached).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import msgspec
import redis.asyncio as aioredis

from eventstore.codec import DecodeError, decode_entry
from eventstore.keys import Keys
from eventstore.projections import PROJECTIONS, Projection
from eventstore.projections.base import StateCodec
from eventstore.records import SessionEnded, tag_of

from ..errors import CommandError

LIVE_CONSUMER_LEASES = 3  # a consumer instance silent this many lease periods is gone (as eventstore.groups says)
ROOMS_PER_PIPELINE = 1000


def entry_id(raw: bytes | str | None) -> tuple[int, int]:
    """A stream entry id as a comparable pair (``(0, 0)`` for none)."""
    if not raw:
        return (0, 0)
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, n = text.partition("-")
    return (int(ms), int(n or 0))


def _int(raw: bytes | None) -> int:
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True)
class StreamEnd:
    seq: int  # the last sequence number written (0: none)
    last_id: str  # the last entry's id ('' when the stream is empty)


@dataclass(frozen=True, slots=True)
class Standing:
    """Where one projection's materialized state of a room stands against the room's stream."""

    room: str
    name: str  # as the user named it (``participants``, ``module:attr``)
    projection: Projection[Any]
    raw_state: bytes | None  # the state as stored (None: never materialized)
    seq: int  # the checkpoint: the last record folded in
    done_id: str  # ... and the last entry read
    stream: StreamEnd
    consumers: int  # live consumer instances of this projection

    @property
    def materialized(self) -> bool:
        return self.raw_state is not None

    @property
    def caught_up(self) -> bool:
        if not self.stream.last_id:  # nothing to fold
            return True
        return bool(self.done_id) and entry_id(self.done_id) >= entry_id(self.stream.last_id)

    @property
    def behind(self) -> int:
        """Records between the checkpoint and the stream's end (0 when caught up)."""
        return 0 if self.caught_up else max(self.stream.seq - self.seq, 0)

    @property
    def ahead(self) -> bool:
        """The checkpoint is past the stream's end: records it folded are gone from Redis."""
        return self.materialized and self.seq > self.stream.seq

    @property
    def stuck(self) -> bool:
        """Not caught up, and nothing will catch it up: never materialized, or no consumer is running."""
        return not self.caught_up and (not self.materialized or self.consumers == 0)

    def state(self) -> Any:
        """The materialized state (the projection's initial state when there is none)."""
        if self.raw_state is None:
            return self.projection.initial(self.room)
        try:
            return StateCodec(self.projection.state_type).decode(self.raw_state)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CommandError(f"the stored {self.name} state of {self.room!r} is not readable ({exc}); "
                               f"`--replay` rebuilds it from the stream") from None


@dataclass(frozen=True, slots=True)
class RoomFacts:
    room: str
    desired: bool
    stream: StreamEnd
    standings: list[Standing]

    @property
    def known(self) -> bool:
        return self.desired or bool(self.stream.last_id) or self.stream.seq > 0 or any(
            s.materialized for s in self.standings)

    def require_known(self) -> RoomFacts:
        """Self, or exit 2 for a room nobody ever recorded or asked for (a typo must not look like an empty
        room)."""
        if not self.known:
            raise CommandError(f"no such room: {self.room!r} (it has no records and is not desired; "
                               "`room-supervisor rooms` lists the known rooms)", 2)
        return self


async def room_facts(redis: aioredis.Redis, keys: Keys, room: str,
                     projections: Sequence[tuple[str, Projection[Any]]] = (), *, lease_ms: int = 10_000
                     ) -> RoomFacts:
    """Everything above about ``room`` and the named ``projections``, in one round trip."""
    live_since = int(time.time() * 1000) - LIVE_CONSUMER_LEASES * lease_ms
    pipe = redis.pipeline(transaction=False)
    pipe.hmget(keys.meta(room), "seq", "last")
    pipe.xrevrange(keys.events(room), count=1)
    pipe.hexists(keys.desired(), room.encode("utf-8"))
    pipe.get(keys.archived(room))
    for _, projection in projections:
        pipe.hmget(keys.state(room, projection.name), "state", "seq", "id")
        pipe.zcount(keys.consumers(projection.name), live_since, "+inf")
    replies = await pipe.execute()
    (meta_seq, meta_last), last, desired, archived = replies[:4]
    if meta_seq is not None:
        end = StreamEnd(_int(meta_seq), (meta_last or b"").decode())
    elif last:
        end = StreamEnd(_int(last[0][1].get(b"seq")), last[0][0].decode())
    else:  # an archived room (its records are in the archive) or none
        end = StreamEnd(_int(archived), "")
    standings = []
    for i, (name, projection) in enumerate(projections):
        (raw, seq, done), consumers = replies[4 + 2 * i], replies[5 + 2 * i]
        standings.append(Standing(room, name, projection, raw, _int(seq), (done or b"").decode(), end,
                                  int(consumers)))
    return RoomFacts(room, bool(desired), end, standings)


# --- many rooms at a glance (``rooms``) ------------------------------------------------------------------------
def _last_record(entries: list[Any]) -> dict[str, Any] | None:
    """The room's last record, briefly: seq, type, time, and why a session ended."""
    if not entries:
        return None
    entry, fields = entries[0]
    try:
        record = decode_entry(fields)
    except DecodeError as exc:
        return {"id": entry.decode(), "error": f"not a record ({exc.reason})"}
    last: dict[str, Any] = {"seq": record.seq, "type": tag_of(record), "ts": record.ts}
    if isinstance(record, SessionEnded):
        last.update(reason=record.reason, rejoin=record.rejoin, detail=record.detail)
    return last


def _summary(name: str, raw: list[bytes | None]) -> dict[str, Any] | None:
    state_raw, seq = raw[0], _int(raw[1])
    if state_raw is None or not seq:
        return None
    try:
        state = msgspec.to_builtins(StateCodec(PROJECTIONS[name].state_type).decode(state_raw))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return {"error": f"unreadable state: {exc}"}
    if name == "participants":
        present = state.get("present") or {}
        return {"seq": seq, "present": sorted(present) if isinstance(present, dict) else present}
    return {"seq": seq, "state": state.get("state", ""), "phase": state.get("phase", "")}


async def at_a_glance(redis: aioredis.Redis, keys: Keys, rooms: Sequence[str]) -> Mapping[str, dict[str, Any]]:
    """room -> its last record (``last``) and the summary of each built-in projection's materialized state
    (when consumers ran): one pipelined round trip per 1,000 rooms."""
    out: dict[str, dict[str, Any]] = {}
    names = list(PROJECTIONS)
    for start in range(0, len(rooms), ROOMS_PER_PIPELINE):
        chunk = rooms[start : start + ROOMS_PER_PIPELINE]
        pipe = redis.pipeline(transaction=False)
        for room in chunk:
            pipe.xrevrange(keys.events(room), count=1)
            for name in names:
                pipe.hmget(keys.state(room, name), "state", "seq")
        replies = await pipe.execute()
        step = 1 + len(names)
        for i, room in enumerate(chunk):
            facts: dict[str, Any] = {}
            last = _last_record(replies[i * step])
            if last is not None:
                facts["last"] = last
            for j, name in enumerate(names):
                summary = _summary(name, replies[i * step + 1 + j])
                if summary is not None:
                    facts[name] = summary
            out[room] = facts
    return out
