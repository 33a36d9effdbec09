"""Daemon heartbeats are found through their index (``rs:daemons``), on one server and on a cluster, where the
heartbeats of several daemons live on several slots (no SCAN, no MGET)."""

from __future__ import annotations

import time

from eventstore.connection import connect
from eventstore.keys import Keys
from harness.fixtures import both_redis_url  # noqa: F401 - every test here runs on one server and on a cluster
from supervisor.heartbeat import Heartbeat, delete_heartbeat, read_heartbeats, write_heartbeat

KEYS = Keys()


def beat(daemon_id: str, instance: str = "i1") -> Heartbeat:
    now = time.time()
    return Heartbeat(id=daemon_id, instance=instance, host="h", pid=1, state="ready", started=now, updated=now,
                     rooms={"r": {"state": "running"}})


async def test_heartbeats_are_read_through_their_index(redis_url):
    redis = connect(redis_url)
    try:
        ids = [f"daemon-{i} ü" for i in range(7)]
        for daemon_id in ids:
            assert await write_heartbeat(redis, KEYS, beat(daemon_id), ttl=30) is None
        assert [b.id for b in await read_heartbeats(redis, KEYS)] == sorted(ids)
        # a second instance under one id is reported by the writer
        other = await write_heartbeat(redis, KEYS, beat(ids[0], "i2"), ttl=30)
        assert other is not None and other.instance == "i1"
        # garbage under a heartbeat's name is skipped; an entry whose heartbeat is gone is skipped, and pruned
        # once it is a minute past its expiry
        await redis.set(KEYS.daemon(ids[1]), b"\xff not json")
        await delete_heartbeat(redis, KEYS, ids[2], "i1")
        await redis.zadd(KEYS.daemons(), {b"long gone": int(time.time() * 1000) - 120_000})
        assert [b.id for b in await read_heartbeats(redis, KEYS)] == sorted(set(ids) - {ids[1], ids[2]})
        assert await redis.zscore(KEYS.daemons(), b"long gone") is None
        assert await redis.zscore(KEYS.daemons(), ids[2].encode()) is not None  # within its minute
    finally:
        await redis.aclose()
