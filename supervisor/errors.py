"""What can go wrong, as types: the supervisor's own errors (only the CLI turns them into exit codes), and what
counts as Redis trouble.

- :data:`REDIS_TROUBLE`: the exceptions that mean "Redis did not answer (in time)"; callers wait them out or
  retry, unlike a bug, which they log with its traceback.
- :func:`text`: a Redis reply value as ``str``. Invalid UTF-8 (a hash field written by hand) is kept with
  ``surrogateescape``, so the text maps back to the same bytes; ``eventstore.keys.encode_name`` refuses such
  text, which is how callers tell a usable room name from garbage.
"""

from __future__ import annotations

import asyncio

from redis.exceptions import RedisClusterException, RedisError

# RedisClusterException: a cluster client that reaches no node, or a slot no node serves for a moment (failover)
REDIS_TROUBLE: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError, RedisClusterException)
# What a command may get from Redis, one server or a cluster (whose client raises RedisClusterException, not a
# RedisError, e.g. when no seed node answers)
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, RedisClusterException)


class SupervisorError(Exception):
    """Base class of the supervisor's own errors."""


class CommandError(SupervisorError):
    """A command cannot do what was asked; the message says why and what to do."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class InvalidRoomName(CommandError):
    """A room name LiveKit would not accept."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


def text(value: bytes | str | int | None) -> str:
    """A Redis reply value as text: ``None`` is ``""``, bytes are decoded as UTF-8 (``surrogateescape``)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)
