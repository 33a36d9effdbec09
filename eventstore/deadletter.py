"""The dead-letter stream: entries that could not be decoded or appended, kept for people to inspect.

Each dead letter is a stream entry in ``rs:dead`` with the fields ``room``, ``source`` (the key it came from,
or ``writer``), ``source_id`` (the entry id, if any), ``reason`` (a short word plus detail), and ``fields``
(the original entry's fields or append arguments, as msgpack so raw bytes survive).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

import msgspec
import redis.asyncio as aioredis

from .keys import Keys

log = logging.getLogger("eventstore")
_msgpack = msgspec.msgpack.Encoder()


class DeadLetters:
    def __init__(self, redis: aioredis.Redis, keys: Keys, *, maxlen: int = 1_000_000) -> None:
        self._redis = redis
        self.keys = keys
        self.maxlen = maxlen
        self._later: list[dict[bytes, bytes]] = []

    @staticmethod
    def entry(room: str, source: str, source_id: str, reason: str, fields: Any) -> dict[bytes, bytes]:
        return {
            b"room": room.encode("utf-8", "surrogateescape"),
            b"source": source.encode(),
            b"source_id": source_id.encode(),
            b"reason": reason.encode("utf-8", "replace"),
            b"fields": _msgpack.encode(fields),
        }

    def later(self, room: str, items: Iterable[tuple[str, bytes, bytes]], reason: str) -> None:
        """Queue records that the append script refused; written by :meth:`flush`."""
        for t, rec, data in items:
            self._later.append(self.entry(room, "writer", "", reason, [t, rec, data]))

    async def flush(self) -> None:
        if not self._later:
            return
        pipe = self._redis.pipeline(transaction=False)
        for entry in self._later:
            pipe.xadd(self.keys.dead(), entry, maxlen=self.maxlen, approximate=True)
        await pipe.execute()
        self._later.clear()

    async def write(self, room: str, source: str, source_id: str, reason: str,
                    fields: Mapping[bytes, bytes] | Any) -> None:
        log.warning("dead letter: room=%r source=%s id=%s reason=%s", room, source, source_id, reason)
        await self._redis.xadd(self.keys.dead(), self.entry(room, source, source_id, reason, fields),
                               maxlen=self.maxlen, approximate=True)
