"""Appending a record exactly once, by an id its producer chose (a LiveKit webhook's event id).

Some producers cannot tell whether an earlier attempt was written: LiveKit re-sends a webhook it got no answer to,
with the same event id. :class:`OnceAppender` appends one record with the append script's *once* form: the room's
once hash (``rs:room:{R}:once``, same slot as its stream) remembers the id with the record's seq in the same atomic
step as the append, so a second append with the same id writes nothing and answers the first one's seq. Records
appended this way take the room's next seq like any other, unfenced (epoch 0), and notify the room's feed
partition. Unlike :class:`~eventstore.writer.EventWriter` nothing is queued or spooled: the caller learns at once
whether the record is in Redis (and a webhook sender, told "not yet", sends it again).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from .batches import _APPEND_LUA, _APPEND_SHA
from .codec import encode_for_append, frame_batch
from .feed import FeedNotifier
from .keys import Keys
from .records import Record

MAX_ONCE_ID = 256  # bytes: ids are LiveKit event ids ("EV_..."); anything longer is not one


class OnceAppendError(RuntimeError):
    """The record could not be appended (Redis refused or did not answer); nothing was written."""


@dataclass(frozen=True, slots=True)
class OnceResult:
    seq: int
    written: bool  # False: an earlier append with the same id wrote the record at ``seq``


class OnceAppender:
    def __init__(self, redis: aioredis.Redis, keys: Keys, *, stream_maxlen: int = 0) -> None:
        self._redis = redis
        self.keys = keys
        self._maxlen = stream_maxlen
        self._feed = FeedNotifier(redis, keys)

    async def append(self, record: Record, once_id: str) -> OnceResult:
        """Append ``record`` unless a record with ``once_id`` was appended to its room before."""
        if not once_id or len(once_id.encode("utf-8", "replace")) > MAX_ONCE_ID:
            raise ValueError(f"a once id must be 1..{MAX_ONCE_ID} bytes, got {once_id[:40]!r}")
        room = record.room
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", _APPEND_SHA, 5, self.keys.events(room), self.keys.meta(room),
                                 self.keys.lease(room), self.keys.archived(room), self.keys.once(room), 0, -1, "",
                                 self._maxlen, frame_batch([encode_for_append(record)]), once_id)
            await self._feed.notify(pipe, [room])
            try:
                reply = (await pipe.execute(raise_on_error=False))[0]
            except Exception as exc:  # noqa: BLE001 - redis-py raises connection trouble from execute itself
                raise OnceAppendError(f"room {room!r}: {type(exc).__name__}: {exc}") from exc
            if isinstance(reply, NoScriptError) and attempt == 0:
                await self._redis.script_load(_APPEND_LUA)
                continue
            break
        if isinstance(reply, Exception) or not isinstance(reply, list) or not reply:
            raise OnceAppendError(f"room {room!r}: append refused: {reply}")
        status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if status == "OK":
            return OnceResult(int(reply[2]), True)
        if status == "SEEN":
            return OnceResult(int(reply[1]), False)
        raise OnceAppendError(f"room {room!r}: append answered {reply!r}")
