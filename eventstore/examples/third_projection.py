"""A projection of your own: data messages per topic.

It implements the :class:`eventstore.projections.base.Projection` protocol (``name``, ``state_type``,
``initial``, ``apply``), so the same object runs

- as a consumer that keeps every room's state in Redis::

      room-supervisor consume eventstore.examples.third_projection:PROJECTION
      room-supervisor state ROOM --projection eventstore.examples.third_projection:PROJECTION --check

- from Python, with :class:`eventstore.consumer.ProjectionRunner` (``python -m eventstore.examples.third_projection``
  catches up once and prints each room's topics), or in memory with :func:`eventstore.projections.base.fold`.

Rules for ``apply``: it is pure (no I/O, no clock, no randomness), never mutates the state it is given and never
raises for a well-formed record. The state is a frozen msgspec Struct, which is also how it is stored (JSON).
"""

from __future__ import annotations

import asyncio
import os
import sys

import msgspec

from eventstore.records import DataReceived, Record

SERVER = ""  # the sender of packets that came from a server SDK (participant_id None)


class TopicStats(msgspec.Struct, frozen=True, kw_only=True):
    messages: int = 0
    bytes: int = 0
    senders: dict[str, int] = {}  # identity (SERVER for server packets) -> messages
    first_ts: float = 0.0
    last_ts: float = 0.0


class TopicsState(msgspec.Struct, frozen=True, kw_only=True):
    room: str
    last_seq: int = 0
    topics: dict[str, TopicStats] = {}


class DataTopics:
    """Per room: how many data packets (and bytes) were received on each topic, and from whom."""

    name = "data-topics"  # used in Redis keys: letters, digits, '-' and '_'
    state_type = TopicsState

    def initial(self, room: str) -> TopicsState:
        return TopicsState(room=room)

    def apply(self, state: TopicsState, record: Record) -> TopicsState:
        if not isinstance(record, DataReceived):
            return state  # the same object: nothing changed
        old = state.topics.get(record.topic) or TopicStats(first_ts=record.ts)
        sender = record.participant_id if record.participant_id is not None else SERVER
        senders = dict(old.senders)  # copy, never mutate the given state
        senders[sender] = senders.get(sender, 0) + 1
        topics = dict(state.topics)
        topics[record.topic] = msgspec.structs.replace(
            old, messages=old.messages + 1, bytes=old.bytes + len(record.data), senders=senders,
            last_ts=record.ts)
        return msgspec.structs.replace(state, topics=topics, last_seq=record.seq)


PROJECTION = DataTopics()


async def main(url: str, rooms: list[str]) -> None:
    from eventstore.connection import connect
    from eventstore.consumer import ProjectionRunner, materialized

    redis = connect(url)
    try:
        applied = await ProjectionRunner(redis, PROJECTION).run(until_caught_up=True)
        print(f"applied {applied} records", file=sys.stderr)
        for room in rooms:
            state, seq = await materialized(redis, room, PROJECTION)
            print(msgspec.json.encode(state).decode())
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), sys.argv[1:]))
