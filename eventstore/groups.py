"""Consumer groups over the feed partitions, with one owner per partition at a time.

Every instance of a consumer (say two ``room-supervisor consume participants`` processes) joins the group
named after it. A room's notifications all land in one partition, and each partition is read by exactly one
instance at a time, so no room is ever processed by two instances at once and its order is kept.

Ownership is a lease per partition (``rs:plock:<group>:<n>``, ``SET NX PX`` with the instance id as value,
renewed and released with compare-and-set scripts). Live instances heartbeat in ``rs:consumers:<group>``; each
aims for ``ceil(partitions / live instances)`` partitions, takes free ones and gives up extras, so a second
instance gets half the partitions within a few lease periods. When an instance takes a partition over, the
entries its previous owner read but never acknowledged are reclaimed (``XAUTOCLAIM``) and handled first.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Sequence

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .connection import is_cluster, read_streams_apart, run_script_many
from .keys import Keys

log = logging.getLogger("eventstore")

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] a feed partition; ARGV[1] group, ARGV[2] consumer. Remove the consumer from the group if nothing is pending
# for it (atomically: a consumer with pending entries stays, for XAUTOCLAIM). 1: removed, 0: kept or absent.
_DROP_CONSUMER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if not ok or #pending > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

IDLE_CONSUMER_MS = 600_000  # a group member idle this long with nothing pending is removed (drop_idle_consumers)

FeedEntry = tuple[int, bytes, dict[bytes, bytes]]  # (partition, entry id, fields)


async def drop_idle_consumers(redis: aioredis.Redis, key: str, group: str, min_idle_ms: int = IDLE_CONSUMER_MS) -> int:
    """Remove the members of ``group`` on feed partition ``key`` that have nothing pending and have been idle for
    ``min_idle_ms``: each consumer instance joins under a name of its own, so without this every restart (or a
    killed instance) would leave a member in every group forever. A removed member that reads again is simply
    created again by XREADGROUP. Returns how many were removed."""
    drop = redis.register_script(_DROP_CONSUMER)
    removed = 0
    try:
        members = await redis.xinfo_consumers(key, group)
    except ResponseError:  # the stream or the group is gone
        return 0
    for member in members:
        if int(member.get("pending") or 0) == 0 and int(member.get("idle") or 0) >= min_idle_ms:
            name = member["name"]
            removed += int(await drop(keys=[key], args=[group, name]))
    return removed


class FeedGroup:
    def __init__(self, redis: aioredis.Redis, keys: Keys, group: str, instance: str, partitions: int, *,
                 lease_ms: int = 10_000) -> None:
        self._redis = redis
        self.keys = keys
        self.group = group
        self.instance = instance
        self.partitions = partitions
        self.lease_ms = lease_ms
        self.owned: set[int] = set()
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._drop = redis.register_script(_DROP_CONSUMER)
        self._groups_ready: set[int] = set()

    async def _ensure_group(self, partition: int) -> None:
        if partition in self._groups_ready:
            return
        try:
            await self._redis.xgroup_create(self.keys.feed(partition), self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups_ready.add(partition)

    async def heartbeat(self) -> int:
        """Record this instance as alive; forget instances silent for 3 lease periods. Returns live count."""
        now = int(time.time() * 1000)
        key = self.keys.consumers(self.group)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(key, {self.instance: now})
        pipe.zremrangebyscore(key, 0, now - 3 * self.lease_ms)
        pipe.zcard(key)
        return int((await pipe.execute())[2])

    async def renew(self) -> set[int]:
        """Heartbeat and renew the owned leases, taking and giving up nothing (for long work between
        rebalances). Returns the partitions whose lease was lost."""
        await self.heartbeat()
        return await self._renew_owned()

    async def _renew_owned(self) -> set[int]:
        owned = sorted(self.owned)
        # one round trip for all (a cluster pipeline on a cluster: the locks live on several slots)
        renewed = await run_script_many(self._redis, self._renew, [([self.keys.partition_lock(self.group, p)],
                                                                    [self.instance, self.lease_ms]) for p in owned])
        lost = {p for p, ok in zip(owned, renewed) if not ok}
        self.owned -= lost
        if lost:
            log.warning("consumer %s/%s: leases of partitions %s lost", self.group, self.instance, sorted(lost))
        return lost

    async def rebalance(self) -> tuple[set[int], set[int]]:
        """Renew owned leases, take free partitions up to the fair share, release extras.
        Returns (gained, lost) partitions."""
        live = max(await self.heartbeat(), 1)
        target = math.ceil(self.partitions / live)
        lost = await self._renew_owned()
        while len(self.owned) > target:
            p = max(self.owned)
            await self.release(p)
            lost.add(p)
        gained: set[int] = set()
        for p in range(self.partitions):
            if len(self.owned) >= target:
                break
            if p in self.owned:
                continue
            if await self._redis.set(self.keys.partition_lock(self.group, p), self.instance,
                                     nx=True, px=self.lease_ms):
                await self._ensure_group(p)
                self.owned.add(p)
                gained.add(p)
        if gained or lost:
            log.info("consumer %s/%s: partitions gained %s lost %s, own %d of %d (%d live)", self.group,
                     self.instance, sorted(gained), sorted(lost), len(self.owned), self.partitions, live)
        return gained, lost

    async def release(self, partition: int) -> None:
        await self._release(keys=[self.keys.partition_lock(self.group, partition)], args=[self.instance])
        self.owned.discard(partition)
        # leave the group's member list too, unless the next owner has entries of ours to reclaim
        await self._drop(keys=[self.keys.feed(partition)], args=[self.group, self.instance])

    async def release_all(self) -> None:
        owned = sorted(self.owned)
        await run_script_many(self._redis, self._release, [([self.keys.partition_lock(self.group, p)], [self.instance])
                                                           for p in owned])
        self.owned.clear()
        await run_script_many(self._redis, self._drop, [([self.keys.feed(p)], [self.group, self.instance])
                                                        for p in owned])
        await self._redis.zrem(self.keys.consumers(self.group), self.instance)

    async def reclaim(self, partition: int, count: int = 500) -> list[FeedEntry]:
        """Entries of ``partition`` that any consumer of the group read but never acknowledged."""
        out: list[FeedEntry] = []
        start = "0-0"
        while True:
            reply = await self._redis.xautoclaim(self.keys.feed(partition), self.group, self.instance,
                                                 min_idle_time=0, start_id=start, count=count)
            start, entries = reply[0], reply[1]
            out.extend((partition, eid, fields) for eid, fields in entries if fields is not None)
            if start in (b"0-0", "0-0") or not entries:
                return out

    async def read(self, *, count: int = 500, block_ms: int | None = 1000) -> list[FeedEntry]:
        """New notifications from the owned partitions (blocking up to ``block_ms``)."""
        if not self.owned:
            return []
        streams = {self.keys.feed(p): ">" for p in sorted(self.owned)}
        if is_cluster(self._redis):  # partitions live on several slots: one read each
            reply = await read_streams_apart(
                self._redis, lambda pipe: [pipe.xreadgroup(self.group, self.instance, {key: ">"}, count=count)
                                           for key in streams], block_ms)
        else:
            reply = await self._redis.xreadgroup(self.group, self.instance, streams, count=count, block=block_ms)
        out: list[FeedEntry] = []
        for key, entries in reply or []:
            partition = int(key.rsplit(b":", 1)[1])
            out.extend((partition, eid, fields) for eid, fields in entries)
        return out

    async def ack(self, entries: Sequence[FeedEntry]) -> None:
        by_partition: dict[int, list[bytes]] = {}
        for partition, eid, _ in entries:
            by_partition.setdefault(partition, []).append(eid)
        if not by_partition:
            return
        pipe = self._redis.pipeline(transaction=False)
        for partition, ids in by_partition.items():
            pipe.xack(self.keys.feed(partition), self.group, *ids)
        await pipe.execute()
