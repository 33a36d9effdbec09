"""Room leases with fencing epochs: at most one daemon holds a room at a time.

A lease is the hash ``keys.lease(room)`` = ``{owner, epoch, expires}`` (``expires`` in Redis server time, ms).
Every change is one Lua script, so claim, renew and release are atomic and use Redis' clock, never a
daemon's. The hash is never deleted: ``epoch`` only grows, and the append script refuses a record whose epoch
is below the lease's (a writer that lost its lease is fenced off).

- ``claim``: free (no owner, or expired) -> the caller becomes owner with ``epoch + 1``; already the caller's
  -> renewed, same epoch; held by an earlier run of the caller's daemon id (``<id>/<other instance>``) -> taken
  back at once with ``epoch + 1`` (a restarted daemon need not wait for its own leases to expire); held by
  someone else and not expired -> refused. A claim may refuse takeovers of expired leases altogether (after a
  Redis outage every lease looks expired; their holders get one TTL to re-assert them).
- ``renew``: only the owner with the same epoch; renews even after expiry as long as nobody claimed it
  meanwhile (the epoch is unchanged, so no other writer can have written). This is how a daemon re-asserts its
  leases after Redis was unreachable.
- ``release``: only the owner with the same epoch; clears owner and expiry, keeps the epoch.

Besides the hashes, ``keys.claimable()`` indexes desired rooms by when they may be claimed, so a daemon looking
for work reads the few rooms that are due instead of every desired room (see :mod:`supervisor.daemon.reconcile`).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from eventstore.connection import run_script_many
from eventstore.keys import Keys

from ..errors import SupervisorError, text

# KEYS[1] lease hash; ARGV: owner, ttl ms, owner prefix of this daemon id ("<id>/"), takeovers allowed ("1"/"0").
# Reply: {status, epoch, previous owner, expires ms}
#   status: 'NEW' (was free), 'TAKEOVER' (expired, held by another daemon), 'RECLAIM' (held by an earlier run of
#   this daemon id: taken back at once, expired or not), 'OWN' (already ours), 'HELD' (refused; expires = the
#   holder's expiry).
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
  return {'OWN', epoch, owner, now_ms + ttl}
end
local mine = ARGV[3] ~= '' and string.sub(owner, 1, #ARGV[3]) == ARGV[3]
local status = 'NEW'
if mine then
  status = 'RECLAIM'
elseif owner ~= '' then
  if expires > now_ms or ARGV[4] ~= '1' then
    return {'HELD', epoch, owner, expires}
  end
  status = 'TAKEOVER'
end
epoch = epoch + 1
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', epoch, 'expires', now_ms + ttl)
return {status, epoch, owner, now_ms + ttl}
"""

# KEYS[1] lease hash; ARGV: owner, epoch, ttl ms. Reply: the new expiry (ms), or 0: lost.
_RENEW = """
local lease = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if lease[1] ~= ARGV[1] or lease[2] ~= ARGV[2] then return 0 end
local now = redis.call('TIME')
local expires = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'expires', expires)
return expires
"""

# KEYS[1] lease hash; ARGV: owner, epoch. Reply: Redis time (ms) when released, or 0: not ours.
_RELEASE = """
local lease = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if lease[1] ~= ARGV[1] or lease[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'owner', '', 'expires', 0)
local now = redis.call('TIME')
return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""

# KEYS[1] the claimable index; ARGV: how many. Reply: rooms whose score (ms) is not after Redis' clock.
_DUE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to a claim. ``epoch`` is the fencing epoch when ``granted``; ``expires_ms`` the lease's expiry
    (Redis time), ours when granted, the holder's when not."""

    granted: bool
    epoch: int
    status: str  # NEW | TAKEOVER | RECLAIM | OWN | HELD
    previous_owner: str
    expires_ms: int = 0

    @property
    def cause(self) -> str:
        """Why a session starts on this claim (``session_started.cause``)."""
        return "takeover" if self.status in ("TAKEOVER", "RECLAIM") else "join"

    @property
    def replaces_a_bot(self) -> bool:
        """The room had another holder whose bot may still be in it (a dead daemon, or our own earlier run)."""
        return self.status in ("TAKEOVER", "RECLAIM")


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    owner: str
    epoch: int
    expires_ms: int


class InvalidLeaseOwner(SupervisorError, ValueError):
    """A lease owner must be a non-empty string (``<daemon id>/<instance>``)."""


def _claim_of(reply: list[object]) -> Claim:
    status = text(reply[0])  # type: ignore[arg-type]
    return Claim(status != "HELD", int(reply[1]), status, text(reply[2]), int(reply[3]))  # type: ignore[arg-type]


class Leases:
    """Claims, renews and releases room leases for one owner (a daemon instance, ``<daemon id>/<instance>``),
    and keeps the claimable index (``keys.claimable()``) in step: a room's score there is when it may be
    claimed next (its lease's expiry, or the time it became free). The index is a hint maintained beside the
    lease hashes (on Redis Cluster they live in other slots); the lease hash is always the truth."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, owner: str, ttl: float) -> None:
        if not owner:
            raise InvalidLeaseOwner("a lease owner must be a non-empty string")
        self.redis = redis
        self.keys = keys
        self.owner = owner
        # Leases of an earlier run of the same daemon id are taken back at once (see _CLAIM).
        self.id_prefix = owner.rpartition("/")[0] + "/" if "/" in owner else ""
        self.ttl = ttl
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._due = redis.register_script(_DUE)

    @property
    def ttl_ms(self) -> int:
        return max(int(self.ttl * 1000), 1)

    def _claim_args(self, takeover: bool) -> list[object]:
        return [self.owner, self.ttl_ms, self.id_prefix, "1" if takeover else "0"]

    async def claim(self, room: str, *, takeover: bool = True) -> Claim:
        """Claim ``room``; ``takeover=False`` refuses to take an expired lease from another daemon."""
        claim = _claim_of(await self._claim(keys=[self.keys.lease(room)], args=self._claim_args(takeover)))
        if claim.granted:
            await self.index({room: claim.expires_ms})
        return claim

    async def renew(self, room: str, epoch: int) -> int:
        """Extend our lease; its new expiry (ms, truthy), or 0 when it is no longer ours."""
        return int(await self._renew(keys=[self.keys.lease(room)], args=[self.owner, epoch, self.ttl_ms]))

    async def release(self, room: str, epoch: int) -> bool:
        released = int(await self._release(keys=[self.keys.lease(room)], args=[self.owner, epoch]))
        if released:
            await self.index({room: released})
        return bool(released)

    async def info(self, room: str) -> LeaseInfo | None:
        raw = await self.redis.hmget(self.keys.lease(room), "owner", "epoch", "expires")
        if raw[1] is None:
            return None
        return LeaseInfo(text(raw[0]), int(raw[1]), int(raw[2] or 0))

    async def claim_many(self, rooms: list[str], *, takeover: bool = True) -> list[Claim]:
        """Claim several rooms in one round trip (each claim is still its own atomic script)."""
        if not rooms:
            return []
        calls = [([self.keys.lease(room)], self._claim_args(takeover)) for room in rooms]
        replies = await run_script_many(self.redis, self._claim, calls)
        claims = [_claim_of(r) for r in replies]
        await self.index({room: c.expires_ms for room, c in zip(rooms, claims) if c.granted})
        return claims

    async def renew_many(self, held: list[tuple[str, int]]) -> list[int]:
        """Renew several leases ``(room, epoch)`` in one round trip; each one's new expiry, or 0 if lost."""
        if not held:
            return []
        calls = [([self.keys.lease(room)], [self.owner, epoch, self.ttl_ms]) for room, epoch in held]
        replies = await run_script_many(self.redis, self._renew, calls)
        expiries = [int(r) for r in replies]
        await self.index({room: e for (room, _), e in zip(held, expiries) if e})
        return expiries

    async def index(self, scores: dict[str, int], *, add: bool = False) -> None:
        """Move rooms in the claimable index (only rooms still in it: a room left meanwhile stays out), or with
        ``add`` put them in (a room no longer desired is dropped from it when it comes due)."""
        if scores:
            await self.redis.zadd(self.keys.claimable(), {room.encode("utf-8"): ms for room, ms in scores.items()},
                                  xx=not add)

    async def due(self, limit: int) -> list[str]:
        """Up to ``limit`` rooms of the claimable index whose time has come (free, or their lease expired),
        the longest waiting first."""
        return [text(r) for r in await self._due(keys=[self.keys.claimable()], args=[limit])]
