"""The feed: per-partition notification streams that tell consumers which rooms have new events.

A room's partition is ``crc32(room) % partitions``. The partition count is fixed in Redis by the first writer
(``SET NX``) so writers and consumers always agree. A feed entry only says "room R has new events"; delivery is
at least once and the room stream plus the per-room sequence carry the guarantees, so feeds are trimmed
(approximately) to ``maxlen`` entries. Consumers also scan ``rs:rooms`` at start to catch rooms whose
notifications were trimmed away.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import redis.asyncio as aioredis

from .keys import DEFAULT_PARTITIONS, Keys, partition_of


class FeedNotifier:
    def __init__(self, redis: aioredis.Redis, keys: Keys, *, maxlen: int = 100_000) -> None:
        self._redis = redis
        self.keys = keys
        self.maxlen = maxlen
        self.partitions: int | None = None

    async def load(self, default: int = DEFAULT_PARTITIONS) -> int:
        self.partitions = await load_partitions(self._redis, self.keys, default)
        return self.partitions

    async def notify(self, pipe: Any, rooms: Iterable[str]) -> None:
        """Queue, on ``pipe``, one notification per room and the room's entry in the room index."""
        if self.partitions is None:
            await self.load()
        assert self.partitions is not None
        now = time.time()
        for room in dict.fromkeys(rooms):
            name = room.encode("utf-8")
            pipe.xadd(self.keys.feed(partition_of(room, self.partitions)), {b"room": name},
                      maxlen=self.maxlen, approximate=True)
            pipe.zadd(self.keys.rooms(), {name: now}, nx=True)


async def load_partitions(redis: aioredis.Redis, keys: Keys, default: int = DEFAULT_PARTITIONS) -> int:
    """The deployment's partition count: set to ``default`` if nobody has set it yet."""
    await redis.set(keys.feed_partitions(), default, nx=True)
    raw = await redis.get(keys.feed_partitions())
    value = int(raw)
    if value < 1:
        raise ValueError(f"invalid partition count {value} in {keys.feed_partitions()}")
    return value
