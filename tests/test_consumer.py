"""ProjectionRunner and FeedGroup against a real redis-server: counting, concurrency, two instances, crashes,
reclaiming a dead instance's entries, rooms found by the index scan.

The per-room order check is :class:`consumer_support.OrderCheck`: its materialized state is the list of seqs it
was applied to, so ``(1, ..., n)`` proves no event was applied twice, skipped or reordered.
"""

from __future__ import annotations

import asyncio
import gc
import random
from typing import Any

import msgspec
import pytest

from consumer_support import (
    ORDER_CHECK, SLOW_ORDER_CHECK, all_caught_up, assert_materialized_equals_replay, cancel, catch_up, client, interleave, poll,
    random_rooms, stop_runner, write,
)
from eventstore.consumer import ProjectionRunner, ProjectionStore, replay, replay_many
from eventstore.feed import load_partitions
from eventstore.groups import FeedGroup, drop_idle_consumers
from eventstore.keys import Keys, partition_of
from eventstore.projections.callstate import CALL_STATE
from eventstore.projections.participants import PARTICIPANTS
from eventstore.records import DataReceived
from eventstore.writer import EventWriter
from harness.fixtures import both_redis_url  # noqa: F401 - every test here runs on one server and on a cluster

KEYS = Keys()
FAST = dict(lease_ms=1500, block_ms=100)  # rebalance every 0.5 s; a blocked read never outlives a lease


async def pending_by_consumer(redis, group: str, partitions: int = 16) -> dict[str, int]:
    """Feed entries read but not acknowledged, per consumer, over all partitions."""
    out: dict[str, int] = {}
    for p in range(partitions):
        if not await redis.exists(KEYS.feed(p)):
            continue
        try:
            info = await redis.xpending(KEYS.feed(p), group)
        except Exception:  # no such group yet
            continue
        for c in info["consumers"]:
            name = c["name"].decode()
            out[name] = out.get(name, 0) + int(c["pending"])
    return {k: v for k, v in out.items() if v}


async def lock_owners(redis, group: str, partitions: int = 16) -> list[str | None]:
    raw = [await redis.get(KEYS.partition_lock(group, p)) for p in range(partitions)]
    return [v.decode() if v is not None else None for v in raw]


async def write_slowly(redis, records, *, every: int = 25) -> None:
    """Append through one writer, flushing every ``every`` records (many feed notifications over time)."""
    writer = EventWriter(redis, producer="slow")
    await writer.start()
    try:
        for i, record in enumerate(records, 1):
            await writer.append(record)
            if i % every == 0:
                assert await writer.flush(timeout=30)
        assert await writer.flush(timeout=30)
    finally:
        await writer.aclose()


# --- one runner ---------------------------------------------------------------------------------------------


async def test_burst_counts_every_record_once_across_pages(redis_url):
    redis = client(redis_url)
    try:
        rooms = random_rooms(1, rooms=3, per_room=230)
        await write(redis, interleave(rooms, 1))
        total = sum(len(r) for r in rooms.values())
        for p in (PARTICIPANTS, CALL_STATE, ORDER_CHECK):
            assert await catch_up(redis, p, chunk=50) == total  # several pages per room
            assert await catch_up(redis, p, chunk=50) == 0  # nothing left: nothing applied again
        await assert_materialized_equals_replay(redis, rooms, (PARTICIPANTS, CALL_STATE, ORDER_CHECK))
    finally:
        await redis.aclose()


async def test_concurrent_catch_up_of_one_room_applies_each_record_once(redis_url):
    """Two runners folding the same room at once (what a lease handoff can cause): the checkpoint's
    compare-and-set lets exactly one save of each page through; the other folds again from the new state."""
    redis = client(redis_url)
    try:
        rooms = random_rooms(2, rooms=1, per_room=400)
        (room, records), = rooms.items()
        await write(redis, records)
        for p in (ORDER_CHECK, PARTICIPANTS):
            a = ProjectionRunner(redis, p, chunk=7)
            b = ProjectionRunner(redis, p, chunk=5)
            counts = await asyncio.gather(*(r.catch_up_room(room) for r in (a, b, a, b)))
            assert sum(counts) == len(records), counts
            assert a.applied + b.applied == len(records)
        await assert_materialized_equals_replay(redis, rooms, (ORDER_CHECK, PARTICIPANTS))
    finally:
        await redis.aclose()


async def test_rooms_whose_notifications_are_gone_are_found_by_the_index_scan(redis_url):
    redis = client(redis_url)
    try:
        rooms = random_rooms(3, rooms=12, per_room=20)
        await write(redis, interleave(rooms, 3))
        deleted = await redis.delete(*[KEYS.feed(p) for p in range(16)])
        assert deleted > 0  # every notification trimmed away
        for p in (PARTICIPANTS, CALL_STATE):
            assert await catch_up(redis, p) == sum(len(r) for r in rooms.values())
        await assert_materialized_equals_replay(redis, rooms, (PARTICIPANTS, CALL_STATE))
    finally:
        await redis.aclose()


async def test_a_partition_count_set_by_the_writer_is_used_by_the_runner(redis_url):
    redis = client(redis_url)
    try:
        await redis.set(KEYS.feed_partitions(), 5)
        rooms = random_rooms(4, rooms=8, per_room=15)
        await write(redis, interleave(rooms, 4))
        assert {k.decode() for k in await redis.keys("rs:feed:*")} <= {KEYS.feed(p) for p in range(5)} | {
            KEYS.feed_partitions()}
        runner = ProjectionRunner(redis, PARTICIPANTS)
        assert await runner.run(until_caught_up=True) == sum(len(r) for r in rooms.values())
        assert runner.group is not None and runner.group.partitions == 5
        await assert_materialized_equals_replay(redis, rooms, (PARTICIPANTS,))
    finally:
        await redis.aclose()


async def test_leases_are_kept_while_a_long_backlog_is_caught_up(redis_url, caplog):
    """Catching up takes several lease periods (a heavy reducer, 2 ms per record); the runner renews its leases
    as it goes, so nobody could take its partitions over meanwhile."""
    redis = client(redis_url)
    try:
        # ~4 s of work in all, ~0.5 s per room between renewals: several lease periods, each with a margin that a
        # busy machine (or six cluster nodes beside the test) does not eat up
        rooms = random_rooms(10, rooms=8, per_room=250)
        await write(redis, interleave(rooms, 10))
        runner = ProjectionRunner(redis, SLOW_ORDER_CHECK, instance="busy", lease_ms=1000, block_ms=50)
        task = asyncio.create_task(runner.run(until_caught_up=True))
        samples: list[list[str | None]] = []
        while not task.done():
            await asyncio.wait({task}, timeout=0.05)  # sample the locks while it works
            pipe = redis.pipeline(transaction=False)  # not MGET: on a cluster the locks live on several slots
            for p in range(16):
                pipe.get(KEYS.partition_lock(SLOW_ORDER_CHECK.name, p))
            raw = await pipe.execute()
            samples.append([v.decode() if v is not None else None for v in raw])
        assert await task == sum(len(r) for r in rooms.values())
        # from the moment it held them all until it let them go at the end, it held every one in every sample
        held = [i for i, s in enumerate(samples) if s == ["busy"] * 16]
        assert held and len(held) >= len(samples) // 2, samples
        assert held == list(range(held[0], held[-1] + 1)), [(i, s) for i, s in enumerate(samples) if i not in held]
        assert "lost" not in caplog.text
        await assert_materialized_equals_replay(redis, rooms, (SLOW_ORDER_CHECK,))
    finally:
        await redis.aclose()


class Payloads(msgspec.Struct, frozen=True):
    room: str
    data: tuple[bytes, ...] = ()


class PayloadLog:
    """Every data payload of a room, in order (bytes must come back exactly)."""

    name = "payloads"
    state_type = Payloads

    def initial(self, room: str) -> Payloads:
        return Payloads(room)

    def apply(self, state: Payloads, record: Any) -> Payloads:
        if isinstance(record, DataReceived):
            return Payloads(state.room, state.data + (record.data,))
        return state


PAYLOADS = PayloadLog()


@pytest.mark.parametrize("per_trip,count", [(64, 1000), (3, 7)])
async def test_replay_many_equals_replay_room_by_room(redis_url, per_trip, count):
    """The bulk rebuild gives replay()'s states, also across pages, with foreign entries in the streams (the
    page falls back to decoding entry by entry) and payloads that must stay byte-exact."""
    redis = client(redis_url)
    try:
        rooms = random_rooms(11, rooms=12, per_room=40)
        feed = interleave(rooms, 11)
        await write(redis, feed[: len(feed) // 2])
        odd = sorted(rooms)[:3]
        await redis.xadd(KEYS.events(odd[0]), {"hello": "world"})
        await redis.xadd(KEYS.events(odd[1]), {"type": "connected", "seq": "999", "rec": "[1,2]"})
        await redis.xadd(KEYS.events(odd[2]), {"type": "data_received", "seq": "5", "rec": "{}", "data": "x"})
        await write(redis, feed[len(feed) // 2 :])
        projections = (PARTICIPANTS, CALL_STATE, ORDER_CHECK, PAYLOADS)
        assert gc.isenabled()
        rebuilt = await replay_many(redis, [*rooms, "no such room"], projections, rooms_per_trip=per_trip,
                                    count=count)
        assert gc.isenabled()  # paused while it ran, on again
        assert set(rebuilt) == {*rooms, "no such room"}
        for room, records in rooms.items():
            for p, state in zip(projections, rebuilt[room]):
                assert state == await replay(redis, room, p), (room, p.name)
            assert rebuilt[room][2].seqs == tuple(range(1, len(records) + 1))
            assert rebuilt[room][3].data == tuple(r.data for r in records if isinstance(r, DataReceived))
        assert rebuilt["no such room"] == [p.initial("no such room") for p in projections]
    finally:
        await redis.aclose()


async def test_replay_many_leaves_the_connection_pool_clean_after_an_error_or_a_cancel(redis_url):
    """Replies left unread on a connection (an error in the middle of a batch, a cancellation) must not reach
    the next command that uses that connection."""
    from redis.exceptions import ResponseError

    redis = client(redis_url)
    try:
        rooms = random_rooms(12, rooms=40, per_room=30)
        await write(redis, interleave(rooms, 12))
        names = sorted(rooms)
        await redis.set(KEYS.events("not a stream"), "x")
        with pytest.raises(ResponseError):
            await replay_many(redis, names[:5] + ["not a stream"] + names[5:], (PARTICIPANTS,), rooms_per_trip=4)
        assert gc.isenabled()
        for turns in (0, 1, 3, 10):
            task = asyncio.create_task(replay_many(redis, names, (PARTICIPANTS,), rooms_per_trip=4))
            for _ in range(turns):
                await asyncio.sleep(0)
            await cancel(task)
            assert gc.isenabled()
            # every connection of the pool answers its own commands
            assert await asyncio.gather(*(redis.get(KEYS.events("not a stream")) for _ in range(8))) == [b"x"] * 8
        rebuilt = await replay_many(redis, names, (PARTICIPANTS,))
        for room in names:
            assert rebuilt[room][0] == await replay(redis, room, PARTICIPANTS)
    finally:
        await redis.aclose()


# --- two instances ------------------------------------------------------------------------------------------


async def test_two_instances_share_partitions_and_keep_each_rooms_order(redis_url):
    redis = client(redis_url)
    tasks: dict[str, tuple[ProjectionRunner[Any], asyncio.Task[int]]] = {}

    def start(projection, name: str) -> None:
        runner = ProjectionRunner(redis, projection, instance=name, **FAST)
        tasks[f"{projection.name}/{name}"] = (runner, asyncio.create_task(runner.run(), name=name))

    try:
        await load_partitions(redis, KEYS)
        rooms = random_rooms(5, rooms=40, per_room=60)
        feed = interleave(rooms, 5)
        assert len({partition_of(r, 16) for r in rooms}) >= 12
        for projection in (ORDER_CHECK, PARTICIPANTS):
            start(projection, "a")
            start(projection, "b")

        async def split() -> bool:
            for projection in (ORDER_CHECK, PARTICIPANTS):
                owners = await lock_owners(redis, projection.name)
                if sorted(owners, key=str) != ["a"] * 8 + ["b"] * 8:
                    return False
            return True

        await poll(split, "both instances owning half of the partitions each")
        a, b = tasks["order-check/a"][0], tasks["order-check/b"][0]
        assert a.group is not None and b.group is not None
        assert a.group.owned.isdisjoint(b.group.owned) and len(a.group.owned | b.group.owned) == 16

        third = len(feed) // 3
        await write_slowly(redis, feed[:third])
        # hand partitions over while events keep coming: 'a' leaves, 'b' takes everything, 'c' joins
        stopped = stop_runner(*tasks.pop("order-check/a"))
        await asyncio.gather(write_slowly(redis, feed[third : 2 * third]), stopped)
        start(ORDER_CHECK, "c")
        await write_slowly(redis, feed[2 * third :])
        await poll(lambda: all_caught_up(redis, rooms, (ORDER_CHECK, PARTICIPANTS)), "both projections caught up")

        applied = {name: await stop_runner(runner, task) for name, (runner, task) in tasks.items()}
        tasks.clear()
        assert applied["participants/a"] > 0 and applied["participants/b"] > 0, applied
        assert applied["participants/a"] + applied["participants/b"] == len(feed)
        assert a.applied > 0 and b.applied > 0
        assert a.applied + applied["order-check/b"] + applied["order-check/c"] == len(feed)
        await assert_materialized_equals_replay(redis, rooms, (ORDER_CHECK, PARTICIPANTS))
        assert await pending_by_consumer(redis, ORDER_CHECK.name) == {}
    finally:
        for _, task in tasks.values():
            await cancel(task)
        await redis.aclose()


# --- crashes ------------------------------------------------------------------------------------------------


class Crash(Exception):
    """The process dies here."""


class WatchedRunner(ProjectionRunner[Any]):
    """The real runner, telling when it has dealt with newly gained partitions (and reads the feed next)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settled = asyncio.Event()

    async def _on_gained(self, gained: set[int], total: int) -> None:
        await super()._on_gained(gained, total)
        if self.group is not None and len(self.group.owned) == total:
            self.settled.set()


class CrashingStore(ProjectionStore[Any]):
    """The real store, with a crash injected just before (or just after) the ``crash_at``-th checkpoint save."""

    def __init__(self, redis, projection, *, crash_at: int, when: str) -> None:
        super().__init__(redis, projection, KEYS)
        self.crash_at, self.when, self.saves = crash_at, when, 0

    async def save(self, room, before, state, after) -> bool:
        if self.when == "before" and self.saves + 1 == self.crash_at:
            raise Crash(f"before save {self.crash_at}")
        ok = await super().save(room, before, state, after)
        self.saves += 1
        if self.when == "after" and self.saves == self.crash_at:
            raise Crash(f"after save {self.crash_at}")
        return ok


@pytest.mark.parametrize("projection", [ORDER_CHECK, PARTICIPANTS, CALL_STATE], ids=lambda p: p.name)
@pytest.mark.parametrize("when", ["before", "after"])
async def test_crash_mid_batch_between_fold_and_save(redis_url, projection, when):
    """A runner dies between folding and saving a room (or between saving and acknowledging the batch) while
    events arrive. Its successor reclaims the unacknowledged notifications; nothing is applied twice or lost."""
    redis = client(redis_url)
    try:
        await load_partitions(redis, KEYS)
        rooms = random_rooms(6, rooms=10, per_room=45)
        feed = interleave(rooms, 6)
        chunks = [feed[i : i + 90] for i in range(0, len(feed), 90)]
        written: dict[str, list[Any]] = {}
        for i, chunk in enumerate(chunks):
            runner = WatchedRunner(redis, projection, instance=f"doomed-{i}", **FAST)
            runner.store = CrashingStore(redis, projection, crash_at=1 + i % 3, when=when)
            task = asyncio.create_task(runner.run())
            await asyncio.wait_for(runner.settled.wait(), 30)  # owns everything, nothing behind: reads the feed
            await write(redis, chunk)
            with pytest.raises(Crash):
                await asyncio.wait_for(task, 30)
            # it died inside a batch: notifications read and never acknowledged
            assert (await pending_by_consumer(redis, projection.name)).get(runner.instance, 0) > 0
            assert await lock_owners(redis, projection.name) == [None] * 16  # released on the way down
            # a successor (burst) reclaims them and finishes the job
            assert await catch_up(redis, projection, instance=f"heir-{i}") > 0
            assert await pending_by_consumer(redis, projection.name) == {}
            for record in chunk:
                written.setdefault(record.room, []).append(record)
            await assert_materialized_equals_replay(redis, written, (projection,))
        assert written == rooms
        assert await pending_by_consumer(redis, projection.name) == {}
    finally:
        await redis.aclose()


async def test_runners_cancelled_at_random_points_while_events_arrive(redis_url):
    rng = random.Random(7)
    redis = client(redis_url)
    projections = (ORDER_CHECK, PARTICIPANTS, CALL_STATE)
    live: dict[str, tuple[ProjectionRunner[Any], asyncio.Task[int]]] = {}
    restarts = 0

    def start(projection) -> None:
        name = rng.choice(("x", "y", f"fresh-{restarts}"))  # sometimes the same instance id comes back
        runner = ProjectionRunner(redis, projection, instance=name, chunk=rng.choice((3, 50, 1000)), **FAST)
        live[projection.name] = (runner, asyncio.create_task(runner.run()))

    try:
        await load_partitions(redis, KEYS)
        rooms = random_rooms(8, rooms=15, per_room=80)
        writing = asyncio.create_task(write_slowly(redis, interleave(rooms, 8), every=10))
        for p in projections:
            start(p)
        while not writing.done() or restarts < 30:
            for _ in range(rng.randrange(1, 300)):  # let it run a random number of loop turns
                await asyncio.sleep(0)
            victim = rng.choice(projections)
            await cancel(live.pop(victim.name)[1])
            restarts += 1
            start(victim)
        await writing
        await poll(lambda: all_caught_up(redis, rooms, projections), "caught up after the last restart")
        for runner, task in live.values():
            await stop_runner(runner, task)
        live.clear()
        await assert_materialized_equals_replay(redis, rooms, projections)
    finally:
        for _, task in live.values():
            await cancel(task)
        await redis.aclose()


async def test_entries_read_by_a_dead_instance_are_reclaimed_by_the_new_owner(redis_url):
    redis = client(redis_url)
    try:
        rooms = random_rooms(9, rooms=20, per_room=25)
        await write(redis, interleave(rooms, 9))
        total = await load_partitions(redis, KEYS)
        dead = FeedGroup(redis, KEYS, PARTICIPANTS.name, "dead", total, lease_ms=FAST["lease_ms"])
        await dead.rebalance()
        assert dead.owned == set(range(total))
        read = await dead.read(count=10_000, block_ms=None)
        assert read
        assert await pending_by_consumer(redis, PARTICIPANTS.name) == {"dead": len(read)}
        # ... and it dies here: no ack, no release; its leases run out on their own

        runner = ProjectionRunner(redis, PARTICIPANTS, instance="heir", **FAST)
        task = asyncio.create_task(runner.run())
        try:
            await poll(lambda: _all_heir(redis), "the heir owning every partition")
            await poll(lambda: _no_pending(redis), "the dead instance's entries reclaimed and acknowledged")
            await poll(lambda: all_caught_up(redis, rooms, (PARTICIPANTS,)), "caught up")
        finally:
            await stop_runner(runner, task)
        await assert_materialized_equals_replay(redis, rooms, (PARTICIPANTS,))
    finally:
        await redis.aclose()


async def test_members_leave_the_groups_with_their_instance_and_idle_ones_are_removed(redis_url):
    """Each instance joins the groups under a name of its own: one that ends leaves them, and the members killed
    instances leave behind are removed once idle (by the archiver's pass), unless entries are pending for them."""
    redis = client(redis_url)
    try:
        rooms = random_rooms(11, rooms=10, per_room=5)
        await write(redis, interleave(rooms, 11))
        for n in range(3):
            await ProjectionRunner(redis, PARTICIPANTS, instance=f"run{n}", **FAST).run(until_caught_up=True)
        total = await load_partitions(redis, KEYS)
        assert await group_members(redis, PARTICIPANTS.name, total) == {}
        await write(redis, [r for records in random_rooms(12, rooms=5, per_room=3, prefix="more").values()
                            for r in records])
        dead = FeedGroup(redis, KEYS, PARTICIPANTS.name, "dead", total, lease_ms=FAST["lease_ms"])
        await dead.rebalance()
        read = await dead.read(count=10_000, block_ms=None)  # ... and it dies: no ack, no release
        holding = {p for p, _, _ in read}
        assert holding
        for p in range(total):
            await redis.xgroup_createconsumer(KEYS.feed(p), PARTICIPANTS.name, "idle")
        members = await group_members(redis, PARTICIPANTS.name, total)
        assert all(members[p] >= {"idle"} for p in range(total)) and all("dead" in members[p] for p in holding)
        dead_members = sum("dead" in m for m in members.values())
        for p in range(total):
            assert await drop_idle_consumers(redis, KEYS.feed(p), PARTICIPANTS.name, min_idle_ms=60_000) == 0
        removed = sum([await drop_idle_consumers(redis, KEYS.feed(p), PARTICIPANTS.name, min_idle_ms=0)
                       for p in range(total)])
        assert removed == total + dead_members - len(holding)
        assert await group_members(redis, PARTICIPANTS.name, total) == {p: {"dead"} for p in holding}
        assert await drop_idle_consumers(redis, "rs:feed:none", PARTICIPANTS.name, min_idle_ms=0) == 0
    finally:
        await redis.aclose()


async def group_members(redis, group: str, partitions: int) -> dict[int, set[str]]:
    out = {}
    for p in range(partitions):
        if await redis.exists(KEYS.feed(p)):
            names = {m["name"].decode() for m in await redis.xinfo_consumers(KEYS.feed(p), group)}
            if names:
                out[p] = names
    return out


async def _all_heir(redis) -> bool:
    return await lock_owners(redis, PARTICIPANTS.name) == ["heir"] * 16


async def _no_pending(redis) -> bool:
    return await pending_by_consumer(redis, PARTICIPANTS.name) == {}
