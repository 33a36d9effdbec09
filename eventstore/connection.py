"""The Redis client for a long-running writer or consumer: its construction, and the cancellation check loops
that send many commands through it need on Python 3.11."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Sequence
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


class BadRedisUrl(ValueError):
    """A Redis URL that names no server we can connect to."""


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)


def is_cluster(redis: Any) -> bool:
    """``redis`` is a Redis Cluster client (commands over several keys must then keep to one slot)."""
    return isinstance(redis, RedisCluster)


def cluster_seeds(url: str) -> tuple[list[tuple[str, int]], str | None, str | None, bool]:
    """``redis+cluster://[user:password@]host:port[,host:port...]`` -> (seed nodes, username, password, tls).
    Raises :class:`BadRedisUrl`."""
    tls = url.startswith("rediss+")
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    rest, _, path = rest.partition("/")
    if path not in ("", "0") or query:
        raise BadRedisUrl("a cluster URL has database 0 only and takes no parameters (redis+cluster://host:port,...)")
    userinfo, at, hosts = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) if colon else None)
        if not colon:  # redis://secret@host: the password alone, as redis-py reads it
            username, password = None, unquote(user)
    seeds: list[tuple[str, int]] = []
    for part in hosts.split(","):
        host, colon, port = part.strip().rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadRedisUrl(f"cluster seed {part.strip()[:60]!r} is not host:port")
        seeds.append((host, int(port)))
    return seeds, username, password, tls


class _Cluster(RedisCluster):
    """redis-py's cluster client, whose first commands wait until it knows the cluster: several commands sent at
    once by a client that has not yet initialized (a fresh client, 12 lease claims at once) were seen failing with
    "Connection closed by server" and a connection without a writer (redis-py 8.1); initializing first avoids it.
    The same holds when it must learn the cluster again (after a failover)."""

    _ready: asyncio.Lock | None = None
    generation = 0  # how often it set out to learn the cluster (a pipeline resent after an error does so first)

    async def initialize(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:
            self.generation += 1
        return await super().initialize(*args, **kwargs)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:  # redis-py's own flag: not initialized yet, or to learn the cluster again (failover)
            if self._ready is None:
                self._ready = asyncio.Lock()
            async with self._ready:  # the others wait here until it is done, then go on together
                await self.initialize()
        return await super().execute_command(*args, **kwargs)


def connect(url: str, *, socket_timeout: float = 5.0, connect_timeout: float = 2.0,
            client_name: str | None = None) -> aioredis.Redis:
    """A client for ``url`` returning bytes (entries carry raw payloads), with bounded timeouts.

    ``redis://``, ``rediss://`` and ``unix://`` give a client of one server; ``redis+cluster://host:port,...``
    (``rediss+cluster://`` with TLS) a Redis Cluster client (redis-py's ``RedisCluster``: it finds the cluster's
    nodes from the seeds and routes each command by its key's slot; every key of a room shares the room's hash
    tag, so a room's scripts run on one node).

    Retries inside redis-py are kept to one quick retry: the writer and consumers have their own recovery
    loops, and a long hidden retry would hide an outage from them.
    """
    common: dict[str, Any] = dict(decode_responses=False, socket_timeout=socket_timeout,
                                  socket_connect_timeout=connect_timeout, client_name=client_name,
                                  retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1))
    if is_cluster_url(url):
        seeds, username, password, tls = cluster_seeds(url)
        return _Cluster(startup_nodes=[ClusterNode(h, p) for h, p in seeds], username=username,
                            password=password, ssl=tls, require_full_coverage=False,
                            **common)  # type: ignore[return-value]
    return aioredis.Redis.from_url(url, health_check_interval=15, **common)


async def run_script_many(redis: Any, script: Any, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
    """``script`` (from ``register_script``) run once per ``(keys, args)``, all in one pipeline, on one server or
    a cluster (redis-py's cluster pipeline refuses ``evalsha`` and scripts as pipeline clients; EVALSHA through
    ``execute_command`` is routed by its keys). A node that does not know the script yet gets it loaded and the
    calls that found it missing are sent again. Raises the first error reply, like ``pipeline.execute()``."""
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for attempt in range(2):
        async with redis.pipeline(transaction=False) as pipe:  # reset even when cancelled
            for i in todo:
                keys, args = calls[i]
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            got = await pipe.execute(raise_on_error=False)
        missing = []
        for i, reply in zip(todo, got):
            if isinstance(reply, NoScriptError) and attempt == 0:
                missing.append(i)
            else:
                replies[i] = reply
        if not missing:
            break
        await redis.script_load(script.script)
        todo = missing
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


async def drop_idle_connections(redis: Any) -> None:
    """Close the idle pooled connections of a client of one server (they may belong to a Redis process that went
    away). A cluster client needs none of this: redis-py drops a node's connections on its errors and learns the
    cluster's shape again."""
    if not is_cluster(redis):
        await redis.connection_pool.disconnect(inuse_connections=False)


CLUSTER_POLL = 0.05  # s between reads of a cluster's streams while they have nothing new


async def read_streams_apart(redis: Any, queue: Callable[[Any], None], block_ms: int | None) -> list[Any]:
    """XREAD / XREADGROUP of several streams on a Redis Cluster, where one command may not name keys of several
    slots: ``queue(pipe)`` queues one read per stream (without BLOCK) on a cluster pipeline (redis-py sends each
    node its part), and while every stream has nothing new the reads are repeated every 50 ms until ``block_ms``
    has passed (None: once; 0: until something comes). Returns the replies' ``[stream, entries]`` items merged,
    as one multi-stream read returns them."""
    loop = asyncio.get_running_loop()
    deadline = None if not block_ms else loop.time() + block_ms / 1000
    while True:
        pipe = redis.pipeline(transaction=False)
        queue(pipe)
        replies = await pipe.execute()
        merged = [item for reply in replies for item in (reply or [])]
        if merged or block_ms is None or (deadline is not None and loop.time() >= deadline):
            return merged
        await asyncio.sleep(CLUSTER_POLL if deadline is None else min(CLUSTER_POLL, max(0.0, deadline - loop.time())))


def honour_cancellation() -> None:
    """Raise ``CancelledError`` if this task was asked to cancel and the request got lost on the way.

    On Python 3.11 ``asyncio.wait_for`` returns normally when the operation it waits for finishes in the same
    loop turn as a ``cancel()`` (CPython gh-86296, fixed in 3.12), and redis-py sends every command through
    ``wait_for``: a cancelled consumer runner (or ``replay_many``) would go on. ``Task.cancelling()`` still
    counts the request, so they check it between steps.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()
