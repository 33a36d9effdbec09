"""Redis client construction with settings that suit a long-running writer or consumer."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


def connect(url: str, *, socket_timeout: float = 5.0, connect_timeout: float = 2.0,
            client_name: str | None = None) -> aioredis.Redis:
    """A client for ``url`` returning bytes (entries carry raw payloads), with bounded timeouts.

    Retries inside redis-py are kept to one quick retry: the writer and consumers have their own recovery
    loops, and a long hidden retry would hide an outage from them.
    """
    return aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
        client_name=client_name,
    )
