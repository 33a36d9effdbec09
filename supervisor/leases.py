"""Room leases with fencing epochs: at most one daemon holds a room at a time.

A lease is the hash ``keys.lease(room)`` = ``{owner, epoch, expires}`` (``expires`` in Redis server time, ms).
Every change is one Lua script, so claim, renew and release are atomic and use Redis' clock, never a
daemon's. The hash is never deleted: ``epoch`` only grows, and the append script refuses a record whose epoch
is below the lease's (a writer that lost its lease is fenced off).

- ``claim``: free (no owner, or expired) -> the caller becomes owner with ``epoch + 1``; already the caller's
  -> renewed, same epoch; held by someone else and not expired -> refused.
- ``renew``: only the owner with the same epoch; renews even after expiry as long as nobody claimed it
  meanwhile (the epoch is unchanged, so no other writer can have written).
- ``release``: only the owner with the same epoch; clears owner and expiry, keeps the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from eventstore.keys import Keys

from .errors import SupervisorError
from .redisutil import text

# KEYS[1] lease hash; ARGV: owner, ttl ms. Reply: {status, epoch, previous owner}
#   status: 'NEW' (was free), 'TAKEOVER' (was expired, held by another), 'OWN' (already ours), 'HELD'.
_CLAIM = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local lease = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'expires')
local owner = lease[1] or ''
local epoch = tonumber(lease[2] or '0')
local expires = tonumber(lease[3] or '0')
local ttl = tonumber(ARGV[2])
if owner == ARGV[1] then
  redis.call('HSET', KEYS[1], 'expires', now_ms + ttl)
  return {'OWN', epoch, owner}
end
if owner ~= '' and expires > now_ms then
  return {'HELD', epoch, owner}
end
local status = 'NEW'
if owner ~= '' then status = 'TAKEOVER' end
epoch = epoch + 1
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', epoch, 'expires', now_ms + ttl)
return {status, epoch, owner}
"""

# KEYS[1] lease hash; ARGV: owner, epoch, ttl ms. Reply: 1 renewed, 0 lost.
_RENEW = """
local lease = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if lease[1] ~= ARGV[1] or lease[2] ~= ARGV[2] then return 0 end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HSET', KEYS[1], 'expires', now_ms + tonumber(ARGV[3]))
return 1
"""

# KEYS[1] lease hash; ARGV: owner, epoch. Reply: 1 released, 0 not ours.
_RELEASE = """
local lease = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if lease[1] ~= ARGV[1] or lease[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'owner', '', 'expires', 0)
return 1
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to a claim. ``epoch`` is the fencing epoch when ``granted``."""

    granted: bool
    epoch: int
    status: str  # NEW | TAKEOVER | OWN | HELD
    previous_owner: str

    @property
    def cause(self) -> str:
        """Why a session starts on this claim (``session_started.cause``)."""
        return "takeover" if self.status == "TAKEOVER" else "join"


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    owner: str
    epoch: int
    expires_ms: int


class InvalidLeaseOwner(SupervisorError, ValueError):
    """A lease owner must be a non-empty string (``<daemon id>/<instance>``)."""


class Leases:
    """Claims, renews and releases room leases for one owner (a daemon instance)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, owner: str, ttl: float) -> None:
        if not owner:
            raise InvalidLeaseOwner("a lease owner must be a non-empty string")
        self.redis = redis
        self.keys = keys
        self.owner = owner
        self.ttl = ttl
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @property
    def ttl_ms(self) -> int:
        return max(int(self.ttl * 1000), 1)

    async def claim(self, room: str) -> Claim:
        reply = await self._claim(keys=[self.keys.lease(room)], args=[self.owner, self.ttl_ms])
        status = text(reply[0])
        return Claim(status != "HELD", int(reply[1]), status, text(reply[2]))

    async def renew(self, room: str, epoch: int) -> bool:
        return bool(await self._renew(keys=[self.keys.lease(room)], args=[self.owner, epoch, self.ttl_ms]))

    async def release(self, room: str, epoch: int) -> bool:
        return bool(await self._release(keys=[self.keys.lease(room)], args=[self.owner, epoch]))

    async def info(self, room: str) -> LeaseInfo | None:
        raw = await self.redis.hmget(self.keys.lease(room), "owner", "epoch", "expires")
        if raw[1] is None:
            return None
        return LeaseInfo(text(raw[0]), int(raw[1]), int(raw[2] or 0))

    async def claim_many(self, rooms: list[str]) -> list[Claim]:
        """Claim several rooms in one round trip (each claim is still its own atomic script)."""
        if not rooms:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for room in rooms:
            await self._claim(keys=[self.keys.lease(room)], args=[self.owner, self.ttl_ms], client=pipe)
        replies = await pipe.execute()
        return [Claim(text(r[0]) != "HELD", int(r[1]), text(r[0]), text(r[2])) for r in replies]
