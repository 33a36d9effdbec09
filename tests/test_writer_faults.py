"""EventWriter when Redis fails: kill -9 mid-burst, close while down, unanswered batches, refusals.

Every test checks the same promise: each appended record arrives, in order per room, exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections import defaultdict

import pytest

from eventstore.codec import decode_entry
from eventstore.keys import Keys
from eventstore.records import ParticipantConnected
from eventstore.spool import Spool
from eventstore.writer import EventWriter, RecordsNotWritten
from harness.util import async_wait_until

KEYS = Keys()
pytestmark = pytest.mark.slow


def rec(room: str, n: int) -> ParticipantConnected:
    return ParticipantConnected(room=room, session="s", ts=float(n), participant_id=f"{room}/{n}")


class Burst:
    """Appends records over a set of rooms and remembers, per room, what was appended in which order."""

    def __init__(self, rooms: int, name: str = "room") -> None:
        self.rooms = [f"{name} {i}: ✓" for i in range(rooms)]
        self.sent: dict[str, list[str]] = defaultdict(list)
        self.n = 0
        self.slowest = 0.0

    async def append(self, writer: EventWriter, count: int, *, yield_every: int = 25) -> None:
        for _ in range(count):
            room = self.rooms[self.n % len(self.rooms)]
            record = rec(room, self.n)
            started = time.monotonic()
            await writer.append(record)
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.sent[room].append(record.participant_id)
            self.n += 1
            if self.n % yield_every == 0:
                await asyncio.sleep(0)  # let the flusher put batches in flight between appends

    async def check(self, r) -> None:
        """Every room holds exactly what was appended to it, in order, with seq 1..n."""
        for room in self.rooms:
            got = [decode_entry(fields) for _, fields in await r.xrange(KEYS.events(room))]
            assert [x.seq for x in got] == list(range(1, len(got) + 1)), room
            assert [x.participant_id for x in got] == self.sent[room], room
            assert await r.hget(KEYS.meta(room), "seq") == str(len(got)).encode()
        assert not await r.exists(KEYS.dead())


async def test_kill_9_during_burst_then_restart(fresh_redis, tmp_path, clients):
    r = clients(fresh_redis.url, socket_timeout=2.0)
    writer = EventWriter(r, spool=Spool(tmp_path / "w.spool"), max_pending=200, max_batch=50, max_block=0.2)
    await writer.start()
    burst = Burst(rooms=30)
    await burst.append(writer, 1000)
    fresh_redis.kill()  # batches are typically in flight now: their outcome is unknown to the writer
    await burst.append(writer, 4000)
    # The whole burst went into the writer while Redis was down: append never waits for Redis.
    assert not fresh_redis.running
    assert writer.spooled_bytes > 0  # the bounded memory queue overflowed into the spool
    assert writer.pending <= writer.max_pending
    # Stay down for several seconds: until the writer, now backing off, has failed three more times.
    failed = writer.stats.errors
    await async_wait_until(lambda: writer.stats.errors >= failed + 3, 60, "more failures against a dead Redis")
    assert not writer.redis_ok
    fresh_redis.start()  # same port and directory: the AOF brings back everything acknowledged
    await burst.append(writer, 500)
    assert await writer.flush(timeout=120)
    await writer.aclose()
    assert writer.redis_ok and writer.spooled_bytes == 0
    await burst.check(r)
    assert writer.stats.written + writer.stats.duplicates >= burst.n
    print(f"\nslowest append: {burst.slowest * 1000:.1f} ms (max_block {writer.max_block * 1000:.0f} ms); "
          f"stats {writer.stats}")


async def test_close_while_down_leaves_spool_that_a_new_writer_replays_once(fresh_redis, tmp_path, clients):
    path = tmp_path / "w.spool"
    r = clients(fresh_redis.url, socket_timeout=2.0)
    first = EventWriter(r, producer="daemon-7", spool=Spool(path), max_pending=200, max_batch=40, max_block=0.2)
    await first.start()
    burst = Burst(rooms=12)
    await burst.append(first, 300)
    assert await first.flush(timeout=30)
    await burst.append(first, 150)
    fresh_redis.kill()
    await burst.append(first, 900)
    await first.aclose()  # returns once the flusher gives up, without waiting out its timeout
    assert first.pending == 0
    left = Spool(path)
    assert left.pending_bytes > 0
    left.close()

    fresh_redis.start()
    r2 = clients(fresh_redis.url)
    second = EventWriter(r2, producer="daemon-7", spool=Spool(path))  # same name, as after a daemon restart
    await second.start()
    assert await second.flush(timeout=60)
    await second.aclose()
    assert second.spooled_bytes == 0
    await burst.check(r2)


def _redis_busy(port: int) -> bool:
    """True when redis-server does not answer PING within 0.2 s (it is running a long script)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return not s.recv(16).startswith(b"+PONG")
    except OSError:
        return True


BUSY_SCRIPT = """
local t0 = redis.call('TIME')
repeat
  local t = redis.call('TIME')
until (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > tonumber(ARGV[1])
return 1
"""


async def test_batch_executed_but_unanswered_is_not_written_twice(fresh_redis, clients):
    # Redis is busy with a long script: the writer's pipeline waits in its socket, the writer times out and
    # retries, then Redis runs the original pipeline and every retry. The batch tokens make the retries DUP.
    r = clients(fresh_redis.url, socket_timeout=0.3)
    busy_client = clients(fresh_redis.url, socket_timeout=10.0)
    writer = EventWriter(r, max_block=5.0)
    await writer.start()
    burst = Burst(rooms=5)
    await burst.append(writer, 50)
    assert await writer.flush(timeout=10)
    busy = asyncio.create_task(busy_client.eval(BUSY_SCRIPT, 0, 1_500_000))
    try:
        await async_wait_until(lambda: _redis_busy(fresh_redis.port), 10, "redis-server running the busy script")
        await burst.append(writer, 50)
        assert await writer.flush(timeout=30)
    finally:
        await busy
    await writer.aclose()
    await burst.check(r)
    assert writer.stats.errors >= 1 and writer.stats.duplicates >= 1, writer.stats
    assert writer.stats.written + writer.stats.duplicates >= burst.n


async def test_transient_refusal_is_retried_not_dead_lettered(redis_url, clients):
    # OOM (maxmemory reached) is a state of the server, not of the records: wait it out, never drop.
    r = clients(redis_url)
    admin = clients(redis_url)
    writer = EventWriter(r, max_block=5.0)
    await writer.start()
    burst = Burst(rooms=4)
    await burst.append(writer, 20)
    assert await writer.flush(timeout=10)
    await admin.config_set("maxmemory", "1")
    try:
        await burst.append(writer, 20)
        await async_wait_until(lambda: writer.stats.errors >= 2, 30, "the writer meeting OOM refusals")
        assert writer.pending == 20
    finally:
        await admin.config_set("maxmemory", "0")
    assert await writer.flush(timeout=30)
    await writer.aclose()
    await burst.check(r)


async def test_without_spool_a_full_queue_raises_instead_of_dropping(fresh_redis, clients):
    r = clients(fresh_redis.url, socket_timeout=1.0)
    writer = EventWriter(r, max_pending=50, max_block=0.2)
    await writer.start()
    await writer.append(rec("ns", 0))
    assert await writer.flush(timeout=10)
    fresh_redis.kill()
    with pytest.raises(RecordsNotWritten):
        for n in range(1, 1000):
            await writer.append(rec("ns", n))
    assert not fresh_redis.running
    with pytest.raises(RecordsNotWritten):
        await writer.aclose(timeout=0.5)


async def test_spill_during_a_hanging_send_keeps_the_in_flight_batch_first(fresh_redis, tmp_path, clients):
    """Redis hangs (SIGSTOP) while a batch is in flight; meanwhile the queue fills and spills to the spool from
    the append path, and the writer is closed before Redis answers. The in-flight batch is the oldest: it must
    be spooled first, so the replay keeps the room's order."""
    path = tmp_path / "w.spool"
    r = clients(fresh_redis.url, socket_timeout=1.0)
    writer = EventWriter(r, producer="d", spool=Spool(path), max_pending=4, max_batch=2, max_block=0.05)
    await writer.start()
    assert await writer.flush(timeout=10)
    os.kill(fresh_redis.proc.pid, signal.SIGSTOP)
    try:
        burst = Burst(rooms=1)
        await burst.append(writer, 1, yield_every=1)  # the flusher sends this one; the reply never comes
        await burst.append(writer, 10, yield_every=1)  # fills the queue; the append path spills
        assert writer.spooled_bytes > 0
        await writer.aclose(timeout=0.2)
    finally:
        os.kill(fresh_redis.proc.pid, signal.SIGCONT)
    fresh_redis.kill()
    fresh_redis.start()
    r2 = clients(fresh_redis.url)
    replay = EventWriter(r2, producer="d", spool=Spool(path))
    await replay.start()
    assert await replay.flush(timeout=30)
    await replay.aclose()
    await burst.check(r2)
