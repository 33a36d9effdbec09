"""Property: live consumption, with consumers killed and restarted at random points, ends where replay from
zero ends, for both projections (and the per-room order check), on random valid histories of several rooms.

Each example runs against the real redis-server (emptied first) through the real EventWriter and real
ProjectionRunners; hypothesis draws the histories (``tests/strategies.py``), how they interleave, and the
kill plan: after how many appended records, how many event-loop turns later, which consumer dies, and whether
its successor comes back under the same instance name.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer_support import (
    ORDER_CHECK, all_caught_up, assert_materialized_equals_replay, cancel, client, poll, stop_runner,
)
from eventstore.consumer import ProjectionRunner
from eventstore.projections.callstate import CALL_STATE
from eventstore.projections.participants import PARTICIPANTS
from eventstore.records import Record
from eventstore.writer import EventWriter
from strategies import interleaved, valid_room_histories
from harness.fixtures import both_redis_url  # noqa: F401 - every test here runs on one server and on a cluster

PROJECTIONS = (PARTICIPANTS, CALL_STATE, ORDER_CHECK)
RUNNER = dict(lease_ms=600, block_ms=50)

kill_plans = st.lists(
    st.tuples(
        st.integers(0, 30),  # records appended before this kill
        st.integers(0, 120),  # event-loop turns the consumers get before it
        st.sampled_from(range(len(PROJECTIONS))),  # whose consumer dies
        st.booleans(),  # its successor reuses the instance name
        st.sampled_from((2, 5, 1000)),  # the successor's page size
    ),
    max_size=6,
)


async def live_with_kills(url: str, histories: dict[str, list[Record]], feed: list[Record], plan: list[Any]) -> None:
    redis = client(url)
    live: dict[str, tuple[ProjectionRunner[Any], asyncio.Task[int]]] = {}
    generation = 0

    def start(projection, same_name: bool = True, chunk: int = 1000) -> None:
        name = f"{projection.name}-main" if same_name else f"{projection.name}-{generation}"
        runner = ProjectionRunner(redis, projection, instance=name, chunk=chunk, **RUNNER)
        live[projection.name] = (runner, asyncio.create_task(runner.run()))

    writer = EventWriter(redis, producer="prop")
    try:
        await redis.flushall()
        await writer.start()
        for p in PROJECTIONS:
            start(p)
        position = 0
        for appended, turns, victim, same_name, chunk in plan:
            for record in feed[position : position + appended]:
                await writer.append(record)
            position += appended
            for _ in range(turns):
                await asyncio.sleep(0)  # yield: the consumers and the writer run for a while
            projection = PROJECTIONS[victim]
            await cancel(live.pop(projection.name)[1])
            generation += 1
            start(projection, same_name, chunk)
        for record in feed[position:]:
            await writer.append(record)
        assert await writer.flush(timeout=30)
        # the consumers running now (restarted ones included) catch up live, without help
        await poll(lambda: all_caught_up(redis, histories, PROJECTIONS), "live consumers caught up")
        for runner, task in list(live.values()):
            await stop_runner(runner, task)
        live.clear()
        await assert_materialized_equals_replay(redis, histories, PROJECTIONS)
    finally:
        for _, task in live.values():
            await cancel(task)
        await writer.aclose()
        await redis.aclose()


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(histories=valid_room_histories(max_steps=20), data=st.data())
def test_live_consumption_with_kills_equals_replay(redis_url, histories, data):
    histories = {room: records for room, records in histories.items() if records}
    feed = data.draw(interleaved(histories), label="feed")
    plan = data.draw(kill_plans, label="kill plan")
    asyncio.run(live_with_kills(redis_url, histories, feed, plan))
