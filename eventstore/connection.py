"""The Redis client for a long-running writer or consumer: its construction, and the cancellation check loops
that send many commands through it need on Python 3.11."""

from __future__ import annotations

import asyncio

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
