"""Desired state and control commands: which rooms the daemons should be in, with which pipeline.

``rs:desired`` is a hash ``room -> JSON {pipeline, since, failed}``; it is the only thing ``join``/``leave``
change, and every daemon reconciles towards it. ``rs:control`` is a short stream of commands (``join``,
``leave``) that wakes daemons at once instead of at their next reconcile tick; losing one costs only that
delay, since the hash is the state.

- ``join`` is idempotent: joining a desired room with the same pipeline changes nothing; with another
  pipeline it updates the entry (the daemon restarts the room's session with it); joining a room marked
  failed clears the mark (a person asked again).
- ``leave`` is idempotent: leaving a room that is not desired changes nothing.
- A daemon removes a room whose call ended (room closed or deleted, bot removed) and marks a room failed when
  its restart budget is spent, both with compare-and-set so that a ``join`` made meanwhile wins.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import Enum

import msgspec
import redis.asyncio as aioredis

from eventstore.keys import InvalidKeyPart, Keys, encode_name

from .errors import InvalidRoomName, text

log = logging.getLogger("supervisor")

CONTROL_MAXLEN = 1000
MAX_NAME_BYTES = 1024  # LiveKit's limit on a room name

# KEYS[1] hash; ARGV: field, expected value ('' = must be absent), new value ('' = delete). Reply 1 done, 0 not.
_CAS_FIELD = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (cur or '') ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1
"""


class DesiredRoom(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One desired room. ``since`` is when this desire began (Unix seconds); ``failed`` is non-empty when a
    daemon gave up on the room (restart budget spent), with why. ``cause`` says how the room came: ``join`` (the
    CLI or the SDK; also entries written before causes were kept, which have none) or ``dispatch`` (LiveKit's agent
    dispatch gave a daemon the job ``job``, of the dispatch ``dispatch``)."""

    pipeline: str
    since: float
    failed: str = ""
    cause: str = ""
    job: str = ""
    dispatch: str = ""

    @property
    def how(self) -> str:
        return self.cause or "join"


class JoinResult(str, Enum):
    ADDED = "added"
    UNCHANGED = "unchanged"
    UPDATED = "updated"  # another pipeline
    RESET = "reset"  # was failed, will be tried again


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(DesiredRoom).decode


@dataclass(frozen=True, slots=True)
class DesiredState:
    rooms: dict[str, DesiredRoom]
    raw: dict[str, bytes]  # the JSON each entry was read as, for compare-and-set
    unreadable: dict[str, str]  # name -> why it is skipped (garbage written by hand?); never claimed


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


def unusable_name(name: str) -> str:
    """Why ``name`` (a hash field read with ``surrogateescape``) cannot be a room, or ``""`` if it can."""
    if not name:
        return "empty room name"
    try:
        encode_name(name)
    except InvalidKeyPart:
        return "room name is not valid UTF-8"
    return ""


def shown(name: str) -> str:
    """``name`` for people: its repr, or the repr of its bytes when it is not valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return repr(name.encode("utf-8", "surrogateescape"))
    return repr(name)


class Control:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self.keys = keys
        self._cas = redis.register_script(_CAS_FIELD)

    async def _announce(self, command: str, room: str, pipeline: str = "") -> None:
        fields = {"cmd": command, "room": room.encode("utf-8"), "pipeline": pipeline, "ts": f"{time.time():.3f}"}
        await self._redis.xadd(self.keys.control(), fields, maxlen=CONTROL_MAXLEN, approximate=True)

    async def join(self, room: str, pipeline: str) -> JoinResult:
        """Make ``room`` desired with ``pipeline``; idempotent."""
        key = self.keys.desired()
        name = room.encode("utf-8")
        while True:
            raw = await self._redis.hget(key, name)
            current = _safe_decode(raw)
            if current is not None and current.pipeline == pipeline and not current.failed:
                return JoinResult.UNCHANGED
            entry = DesiredRoom(pipeline=pipeline, since=time.time())
            if await self._cas(keys=[key], args=[name, raw or b"", _encode(entry)]):
                break
        result = JoinResult.ADDED
        if current is not None:
            result = JoinResult.RESET if current.failed and current.pipeline == pipeline else JoinResult.UPDATED
        await self._redis.zadd(self.keys.claimable(), {name: int(entry.since * 1000)}, nx=True)
        await self._announce("join", room, pipeline)
        return result

    async def dispatch(self, room: str, pipeline: str, job: str, dispatch: str) -> bool:
        """Make ``room`` desired for a LiveKit job, unless it is desired already (False: then its bot is there or
        coming, and the job is not needed)."""
        key = self.keys.desired()
        name = room.encode("utf-8")
        entry = DesiredRoom(pipeline=pipeline, since=time.time(), cause="dispatch", job=job, dispatch=dispatch)
        if not await self._cas(keys=[key], args=[name, b"", _encode(entry)]):
            return False
        # not indexed as claimable: the daemon given the job claims the lease at once and indexes the room by the
        # lease's expiry (if it dies before that, the periodic repair indexes the room for every daemon)
        return True

    async def leave(self, room: str) -> bool:
        """Make ``room`` not desired. Returns whether it was."""
        removed = bool(await self._redis.hdel(self.keys.desired(), room.encode("utf-8")))
        await self._redis.zrem(self.keys.claimable(), room.encode("utf-8"))
        if removed:
            await self._announce("leave", room)
        return removed

    async def get(self, room: str) -> DesiredRoom | None:
        return _safe_decode(await self._redis.hget(self.keys.desired(), room.encode("utf-8")))

    async def desired(self) -> DesiredState:
        """All of it (the CLI, and the daemon's periodic repair of the claimable index)."""
        return _desired_state(await self._redis.hgetall(self.keys.desired()))

    async def desired_of(self, rooms: list[str]) -> DesiredState:
        """Only ``rooms`` (one HMGET): what a daemon reads for the rooms it holds or may claim."""
        if not rooms:
            return DesiredState({}, {}, {})
        names = [r.encode("utf-8", "surrogateescape") for r in rooms]
        values = await self._redis.hmget(self.keys.desired(), names)
        return _desired_state({n: v for n, v in zip(names, values) if v is not None})

    async def count(self) -> int:
        return int(await self._redis.hlen(self.keys.desired()))

    async def repair_claimable(self, desired: DesiredState) -> int:
        """Make the claimable index hold exactly the desired rooms that are not failed (a room added since keeps
        its score). Returns how many entries were added or removed. Cheap enough for every minute or so; the
        index is kept in step by every change anyway, this mends what a crash between two writes left."""
        key = self.keys.claimable()
        indexed = {text(m) for m in await self._redis.zrange(key, 0, -1)}
        want = {room: d for room, d in desired.rooms.items() if not d.failed}
        missing = {room.encode("utf-8"): int(d.since * 1000) for room, d in want.items() if room not in indexed}
        extra = [room.encode("utf-8", "surrogateescape") for room in indexed if room not in want]
        if missing:
            await self._redis.zadd(key, missing, nx=True)
        if extra:
            # a room joined since the read is back in both; a lost ZADD of it would wait for the next repair
            current = await self.desired_of([text(r) for r in extra])
            extra = [r for r in extra if text(r) not in current.rooms or current.rooms[text(r)].failed]
            if extra:
                await self._redis.zrem(key, *extra)
        return len(missing) + len(extra)

    async def unindex(self, rooms: list[str]) -> None:
        """Take rooms that are no longer desired (or failed) out of the claimable index."""
        if rooms:
            await self._redis.zrem(self.keys.claimable(), *(r.encode("utf-8", "surrogateescape") for r in rooms))

    async def end_room(self, room: str, seen: DesiredRoom) -> bool:
        """The room's call is over: remove it from desired state, unless someone changed it since ``seen``."""
        return await self._replace(room, seen, None)

    async def mark_failed(self, room: str, seen: DesiredRoom, why: str) -> bool:
        """Give up on ``room`` (until the next ``join``), unless someone changed it since ``seen``."""
        failed = msgspec.structs.replace(seen, failed=why[:500] or "failed")
        return await self._replace(room, seen, failed)

    async def _replace(self, room: str, seen: DesiredRoom, new: DesiredRoom | None) -> bool:
        """Compare-and-set of the room's entry; an ended or failed room leaves the claimable index."""
        key = self.keys.desired()
        name = room.encode("utf-8")
        raw = await self._redis.hget(key, name)
        if raw is None or _safe_decode(raw) != seen:
            return False
        if not await self._cas(keys=[key], args=[name, raw, _encode(new) if new is not None else b""]):
            return False
        await self._redis.zrem(self.keys.claimable(), name)
        return True

    async def last_command_id(self) -> bytes:
        last = await self._redis.xrevrange(self.keys.control(), count=1)
        return last[0][0] if last else b"0-0"

    async def wait_command(self, after: bytes, block_ms: int) -> bytes:
        """Block up to ``block_ms`` for commands after ``after``; returns the id to continue from."""
        reply = await self._redis.xread({self.keys.control(): after}, count=100, block=block_ms)
        if reply:
            return reply[0][1][-1][0]
        return after


def _desired_state(raw: dict[bytes, bytes]) -> DesiredState:
    """The readable entries of (part of) ``rs:desired``, and why the others are skipped."""
    rooms: dict[str, DesiredRoom] = {}
    raws: dict[str, bytes] = {}
    unreadable: dict[str, str] = {}
    for field, value in raw.items():
        name = text(field)
        why = unusable_name(name)
        entry = None if why else _safe_decode(value)
        if entry is None:
            unreadable[name] = why or "not desired-room JSON ({pipeline, since})"
            continue
        rooms[name] = entry
        raws[name] = value
    return DesiredState(rooms, raws, unreadable)


def _safe_decode(raw: bytes | None) -> DesiredRoom | None:
    if raw is None:
        return None
    try:
        entry = _decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return entry if entry.pipeline else None
