"""Room leases on a real Redis: claim, renew, release, expiry and takeover, and fencing of a writer whose lease
was taken over (the append script refuses its records)."""

from __future__ import annotations

import asyncio
import time

import pytest

from eventstore.keys import Keys
from eventstore.reader import RoomReader
from eventstore.records import SessionStarted
from eventstore.connection import connect
from eventstore.writer import EventWriter
from harness.util import async_wait_until
from supervisor.daemon.leases import InvalidLeaseOwner, Leases
from harness.fixtures import both_redis_url  # noqa: F401 - every test here runs on one server and on a cluster

ROOM = "lease room {1}: ünï*"


@pytest.fixture
async def redis(redis_url):
    client = connect(redis_url)
    yield client
    await client.aclose()


def leases(redis, owner: str, ttl: float = 5.0) -> Leases:
    return Leases(redis, Keys(), owner, ttl)


async def test_claim_is_exclusive_renewable_and_releasable(redis):
    a, b = leases(redis, "daemon-a/1"), leases(redis, "daemon-b/1")
    first = await a.claim(ROOM)
    assert (first.granted, first.epoch, first.status, first.cause) == (True, 1, "NEW", "join")
    held = await b.claim(ROOM)
    assert (held.granted, held.status, held.previous_owner) == (False, "HELD", "daemon-a/1")
    again = await a.claim(ROOM)
    assert (again.granted, again.epoch, again.status) == (True, 1, "OWN")
    assert await a.renew(ROOM, 1)
    assert not await a.renew(ROOM, 2)  # wrong epoch
    assert not await b.renew(ROOM, 1)  # not the owner
    assert not await b.release(ROOM, 1)
    assert await a.release(ROOM, 1)
    info = await a.info(ROOM)
    assert info is not None and (info.owner, info.epoch, info.expires_ms) == ("", 1, 0)  # the epoch stays
    second = await b.claim(ROOM)
    assert (second.granted, second.epoch, second.status) == (True, 2, "NEW")
    assert not await a.renew(ROOM, 1)


async def test_expired_lease_is_taken_over_with_a_new_epoch(redis):
    a, b = leases(redis, "daemon-a/1", ttl=0.3), leases(redis, "daemon-b/1", ttl=5.0)
    assert (await a.claim(ROOM)).epoch == 1

    async def taken() -> bool:
        claim = await b.claim(ROOM)
        return claim.granted and claim

    claim = await async_wait_until(taken, 10, "the lease to expire and be taken over")
    assert (claim.status, claim.epoch, claim.previous_owner, claim.cause) == ("TAKEOVER", 2, "daemon-a/1", "takeover")
    assert not await a.renew(ROOM, 1)  # the old holder learns it lost the room
    assert not (await a.claim(ROOM)).granted


async def test_concurrent_claims_grant_one_owner(redis):
    contenders = [leases(redis, f"daemon-{i}/x") for i in range(12)]
    claims = await asyncio.gather(*(c.claim(ROOM) for c in contenders))
    assert sum(c.granted for c in claims) == 1
    many = await contenders[0].claim_many([ROOM, "other-1", "other-2"])
    assert many[0].granted == claims[0].granted  # only the winner may claim it again
    assert [c.granted for c in many[1:]] == [True, True]


async def test_writer_of_a_taken_over_lease_is_fenced(redis):
    keys = Keys()
    a, b = leases(redis, "daemon-a/1", ttl=0.3), leases(redis, "daemon-b/1")
    old_epoch = (await a.claim(ROOM)).epoch
    await async_wait_until(lambda: _granted(b), 10, "takeover")
    new_epoch = (await b.info(ROOM)).epoch
    writer = EventWriter(redis, keys=keys, producer="t")
    await writer.start()
    try:
        for epoch, who in ((old_epoch, "stale"), (new_epoch, "current")):
            await writer.append(SessionStarted(room=ROOM, session=who, ts=time.time(), epoch=epoch))
            assert await writer.flush(10)
    finally:
        await writer.aclose()
    records = await RoomReader(redis, keys).read(ROOM)
    assert [r.session for r in records] == ["current"]
    assert writer.stats.fenced == 1
    dead = await redis.xrange(keys.dead())
    assert len(dead) == 1 and dead[0][1][b"reason"].startswith(b"fenced")


async def _granted(contender: Leases) -> bool:
    return (await contender.claim(ROOM)).granted


def test_owner_must_be_named(redis_url):
    with pytest.raises(InvalidLeaseOwner):
        Leases(connect(redis_url), Keys(), "", 1.0)


async def test_a_restarted_daemon_takes_its_own_lease_back_at_once(redis):
    """Same daemon id, new instance (a restart): the lease is taken back before it expires, with a new epoch;
    another id still has to wait; a twin-free restart needs no TTL wait."""
    before, after = leases(redis, "host-a/111", ttl=60), leases(redis, "host-a/222", ttl=60)
    other = leases(redis, "host-b/333", ttl=60)
    assert (await before.claim(ROOM)).epoch == 1
    assert not (await other.claim(ROOM)).granted
    back = await after.claim(ROOM)
    assert (back.granted, back.status, back.epoch, back.previous_owner, back.cause) == (
        True, "RECLAIM", 2, "host-a/111", "takeover")
    assert not await before.renew(ROOM, 1)  # the earlier run, were it alive, learns it lost the room
    no_slash = leases(redis, "host-a", ttl=60)  # an owner without an instance part never reclaims
    assert not (await no_slash.claim(ROOM)).granted


async def test_takeover_can_be_refused_while_holders_reassert_after_an_outage(redis):
    a, b = leases(redis, "daemon-a/1", ttl=0.2), leases(redis, "daemon-b/1", ttl=5.0)
    assert (await a.claim(ROOM)).epoch == 1
    await async_wait_until(lambda: _expired(a), 10, "the lease to expire")
    refused = await b.claim(ROOM, takeover=False)
    assert (refused.granted, refused.status) == (False, "HELD")
    assert await a.renew(ROOM, 1)  # the holder re-asserts its expired lease: same epoch
    assert (await a.info(ROOM)).epoch == 1


async def _expired(lease: Leases) -> bool:
    info = await lease.info(ROOM)
    seconds, micros = await lease.redis.time()
    return info is not None and info.expires_ms < seconds * 1000 + micros // 1000


async def test_the_claimable_index_follows_the_leases(redis):
    """``due`` lists only rooms whose time has come: free ones, or expired leases; claims, renewals and releases
    move a room's score (only for rooms in the index: a room left meanwhile is not put back)."""
    keys = Keys()
    a = leases(redis, "daemon-a/1", ttl=0.5)
    rooms = ["idx-1", "idx {2}", "idx-3"]
    await redis.zadd(keys.claimable(), {r.encode(): 1000 + i for i, r in enumerate(rooms)})
    assert await a.due(10) == rooms  # oldest first
    assert await a.due(2) == rooms[:2]
    claim = await a.claim(rooms[0])
    assert rooms[0] not in await a.due(10)
    assert claim.expires_ms == int(await redis.zscore(keys.claimable(), rooms[0].encode()))
    await async_wait_until(lambda: _is_due(a, rooms[0]), 10, "the lease to expire in the index")
    renewed, not_held = await a.renew_many([(rooms[0], claim.epoch), (rooms[1], 7)])
    assert renewed > claim.expires_ms and not_held == 0
    assert rooms[0] not in await a.due(10)
    assert await a.release(rooms[0], claim.epoch)
    assert rooms[0] in await a.due(10)
    await redis.zrem(keys.claimable(), rooms[2].encode())
    await a.claim(rooms[2])
    assert await redis.zscore(keys.claimable(), rooms[2].encode()) is None  # left meanwhile: stays out


async def _is_due(lease: Leases, room: str) -> bool:
    return room in await lease.due(10)
