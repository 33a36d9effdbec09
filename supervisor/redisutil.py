"""Two small things every part of the daemon needs when it talks to Redis.

- :data:`REDIS_TROUBLE`: the exceptions that mean "Redis did not answer (in time)"; callers wait them out or
  retry, unlike a bug, which they log with its traceback.
- :func:`text`: a reply value as ``str``. Invalid UTF-8 (a hash field written by hand) is kept with
  ``surrogateescape``, so the text maps back to the same bytes; ``eventstore.keys.encode_name`` refuses such
  text, which is how callers tell a usable room name from garbage.
"""

from __future__ import annotations

import asyncio

from redis.exceptions import RedisError

REDIS_TROUBLE: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)


def text(value: bytes | str | int | None) -> str:
    """A Redis reply value as text: ``None`` is ``""``, bytes are decoded as UTF-8 (``surrogateescape``)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)
