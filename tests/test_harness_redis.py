"""The redis fixtures: isolation by FLUSHALL, kill -9 and restart on the same port and directory."""

from __future__ import annotations

import socket

import pytest
import redis.asyncio as aioredis

from harness.redis_server import RedisServer


async def test_redis_url_is_empty_and_usable(redis_url):
    r = aioredis.from_url(redis_url)
    try:
        assert await r.dbsize() == 0
        await r.set("left-behind", "1")  # the next test must not see it
        info = await r.info("server")
        major = int(str(info["redis_version"]).split(".")[0])
        assert major >= 7, info["redis_version"]
    finally:
        await r.aclose()


async def test_redis_url_was_flushed(redis_url):
    r = aioredis.from_url(redis_url)
    try:
        assert await r.exists("left-behind") == 0
    finally:
        await r.aclose()


def test_redis_binds_loopback_only(redis_server):
    assert redis_server.url.startswith("redis://127.0.0.1:")
    with pytest.raises(OSError):
        # Nothing on another address of this host: bind is 127.0.0.1 only (checked via 127.0.0.2 on lo).
        socket.create_connection(("127.0.0.2", redis_server.port), timeout=1).close()


async def test_kill9_and_restart_same_port_keeps_appendonly_data(fresh_redis: RedisServer):
    port, url = fresh_redis.port, fresh_redis.url
    r = aioredis.from_url(url)
    try:
        await r.xadd("s", {"k": "v1"})
        await r.set("counter", 41)
        await r.incr("counter")
        fresh_redis.kill()
        assert not fresh_redis.ping()
        with pytest.raises(aioredis.ConnectionError):
            await r.ping()
        fresh_redis.start()
        assert fresh_redis.port == port and fresh_redis.url == url
        assert await r.get("counter") == b"42"  # fsync always: every acknowledged write survived SIGKILL
        assert [e[1] for e in await r.xrange("s")] == [{b"k": b"v1"}]
    finally:
        await r.aclose()


async def test_stop_and_restart(fresh_redis: RedisServer):
    fresh_redis.stop()
    assert not fresh_redis.ping()
    fresh_redis.restart()
    assert fresh_redis.ping()


async def test_without_appendonly_kill_loses_data(tmp_path):
    server = RedisServer(tmp_path / "volatile", appendonly=False).start()
    try:
        r = aioredis.from_url(server.url)
        try:
            await r.set("k", "v")
            server.kill()
            server.start()
            await r.connection_pool.disconnect()  # pooled sockets died with the old process
            assert await r.get("k") is None
        finally:
            await r.aclose()
    finally:
        server.stop()
