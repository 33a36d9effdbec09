"""Rebuild throughput: both projections from the log, ours against a fair baseline and a naive floor.

    python bench/replay.py                       # 1,000,000 events in 10,000 rooms
    python bench/replay.py --events 100000 --rooms 1000 --quick
    python bench/replay.py --archived-half       # also: every second room archived, rebuilt through the archive

Starts its own redis-server (free 127.0.0.1 port, temporary directory, no persistence), loads ``--events``
records of plausible calls into ``--rooms`` rooms in the writer's exact entry format (see replay_workload.py),
then rebuilds every room's ``participants`` and ``call-state`` states from zero, in rounds, each contender once
per round:

- ``ours``: :func:`eventstore.consumer.replay_many` (it pauses Python's cyclic GC while it runs);
- ``pipelined``: the fair baseline a competent user of the public API would write: a redis-py pipeline of
  XRANGE for a batch of rooms per round trip, paging with COUNT, each entry's ``rec`` decoded with msgspec
  through the public :func:`eventstore.codec.decode_record` (the payload of a data packet put back from its
  own field), the records folded through the same reducers (:func:`eventstore.projections.fold` with
  ``PARTICIPANTS`` and ``CALL_STATE``), GC paused like ours;
- ``naive``: the floor: one awaited XRANGE per room, no pipelining; otherwise as ``pipelined``.

All three share the projections' rules, so their states must be equal: they are compared on every room after
every round (the full states, not a summary), and ours must have folded every record of every room. Then, for
information (skipped with ``--quick``): ours with the GC left on, ``replay()`` room by room and projection by
projection (the one-room API), and the consumers (``ProjectionRunner.run(until_caught_up=True)`` per
projection, which also writes every state to Redis with its compare-and-set checkpoint).

Prints one JSON object (see bench/README.md). Exit status: 0 when all contenders agree on every room and ours
folded everything (``pass``), whatever the ratios (``target_ours_vs_pipelined`` is a goal for later work,
reported in ``meets_target``, not a gate); 1 when they disagree or the run failed; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis

from common import RedisServer, best_and_median, emit, environment, paused_gc, ratio, rounded  # first: repo path
from eventstore.codec import decode_record
from eventstore.connection import connect
from eventstore.consumer import ProjectionRunner, replay, replay_many
from eventstore.keys import Keys
from eventstore.projections import CALL_STATE, PARTICIPANTS, fold
from eventstore.records import DataReceived, Record
from replay_workload import check_format, load

TARGET_OURS_VS_PIPELINED = 3.0
KEYS = Keys()
PROJECTIONS = (PARTICIPANTS, CALL_STATE)
ROOMS_PER_TRIP = 64  # rooms whose XRANGEs share a round trip (the baseline's and replay_many's default)
PAGE = 1000  # XRANGE COUNT (the baseline's and replay_many's default)
CONTENDERS = ("ours", "pipelined", "naive")

States = dict[str, list[Any]]  # room -> [participants state, call-state state]


# --- the contenders: each rebuilds every room from zero ------------------------------------------------------


async def rebuild_ours(redis: aioredis.Redis, rooms: list[str]) -> States:
    return await replay_many(redis, rooms, PROJECTIONS)


async def rebuild_ours_gc_on(redis: aioredis.Redis, rooms: list[str]) -> States:
    return await replay_many(redis, rooms, PROJECTIONS, pause_gc=False)


def decode(fields: dict[bytes, bytes]) -> Record:
    """A stream entry's record, decoded the way a user of the public codec would: the ``rec`` JSON through
    :func:`eventstore.codec.decode_record` (msgspec), a data packet's payload put back from its own field."""
    record = decode_record(fields[b"rec"])
    if type(record) is DataReceived:
        record = msgspec.structs.replace(record, data=fields[b"data"])
    return record


def fold_entries(room: str, states: list[Any], entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Any]:
    """``states`` after the records of ``entries`` (redis-py's XRANGE reply); undecodable entries are skipped."""
    records = []
    for _, fields in entries:
        try:
            records.append(decode(fields))
        except (KeyError, msgspec.DecodeError):  # msgspec.ValidationError is a DecodeError
            continue
    return [fold(p, room, records, state) for p, state in zip(PROJECTIONS, states)]


async def rebuild_pipelined(redis: aioredis.Redis, rooms: list[str]) -> States:
    out: States = {}
    with paused_gc():
        for i in range(0, len(rooms), ROOMS_PER_TRIP):
            out.update(await _rebuild_batch(redis, rooms[i : i + ROOMS_PER_TRIP]))
    return out


async def _rebuild_batch(redis: aioredis.Redis, batch: list[str]) -> States:
    """One pipeline of XRANGEs per round trip for the rooms of ``batch``; rooms with a full page go again from
    after their last entry."""
    states = {room: [p.initial(room) for p in PROJECTIONS] for room in batch}
    start = dict.fromkeys(batch, "-")
    while start:
        pipe = redis.pipeline(transaction=False)
        for room, after in start.items():
            pipe.xrange(KEYS.events(room), min=after, count=PAGE)
        more = {}
        for room, entries in zip(start, await pipe.execute()):
            states[room] = fold_entries(room, states[room], entries)
            if len(entries) == PAGE:
                more[room] = "(" + entries[-1][0].decode()  # exclusive start (Redis >= 6.2)
        start = more
    return states


async def rebuild_naive(redis: aioredis.Redis, rooms: list[str]) -> States:
    out: States = {}
    with paused_gc():
        for room in rooms:
            entries = await redis.xrange(KEYS.events(room))
            out[room] = fold_entries(room, [p.initial(room) for p in PROJECTIONS], entries)
    return out


REBUILDS: dict[str, Callable[[aioredis.Redis, list[str]], Awaitable[States]]] = {
    "ours": rebuild_ours, "pipelined": rebuild_pipelined, "naive": rebuild_naive,
}


# --- for information: the one-room API and the consumers ----------------------------------------------------


async def replay_per_room(redis: aioredis.Redis, rooms: list[str]) -> int:
    for room in rooms:
        for p in PROJECTIONS:
            await replay(redis, room, p)
    return len(rooms)


async def run_consumers(redis: aioredis.Redis, rooms: list[str]) -> int:
    applied = 0
    for p in PROJECTIONS:
        applied += await ProjectionRunner(redis, p, lease_ms=120_000).run(until_caught_up=True)
    return applied


# --- the run ------------------------------------------------------------------------------------------------


def timed(url: str, fn: Callable[[aioredis.Redis, list[str]], Awaitable[Any]],
          rooms: list[str]) -> tuple[float, Any]:
    """``fn(redis, rooms)`` on a fresh event loop and client, after a full collection; its time and result."""

    async def call() -> tuple[float, Any]:
        redis = connect(url)
        try:
            t = time.perf_counter()
            result = await fn(redis, rooms)
            return time.perf_counter() - t, result
        finally:
            await redis.aclose()

    gc.collect()
    return asyncio.run(call())


def disagreeing(ours: States, other: States) -> list[str]:
    """Rooms whose states (all projections, compared whole) differ from ours."""
    return [room for room in ours if other.get(room) != ours[room]]


def incomplete(ours: States, counts: dict[str, int]) -> list[str]:
    """Rooms where ours did not fold every record (the participants state's position is not the last seq)."""
    return [f"ours stopped before seq {n} in room {room!r}"
            for room, n in counts.items() if room not in ours or ours[room][0].last_seq != n]


def run_rounds(url: str, counts: dict[str, int], rounds: int) -> dict[str, Any]:
    """Every contender once per round (they take turns, so background load hits them alike); each round's
    states are checked against ours."""
    rooms = list(counts)
    for fn in REBUILDS.values():
        timed(url, fn, rooms[:50])  # warm up (connections, caches), untimed
    seconds: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    problems: list[str] = []
    disagree: dict[str, None] = {}
    for _ in range(rounds):
        took, ours = timed(url, rebuild_ours, rooms)
        seconds["ours"].append(took)
        problems += incomplete(ours, counts)
        for name in ("pipelined", "naive"):
            took, states = timed(url, REBUILDS[name], rooms)
            seconds[name].append(took)
            wrong = disagreeing(ours, states)
            disagree.update(dict.fromkeys(wrong))
            problems += [f"{name} differs from ours in {len(wrong)} rooms, e.g. {wrong[0]!r}"] if wrong else []
            del states
        del ours
    return {"seconds": seconds, "problems": problems, "disagreeing_rooms": list(disagree)}


def informational(url: str, counts: dict[str, int]) -> dict[str, int]:
    events, rooms = sum(counts.values()), list(counts)
    out = {}
    took, _ = timed(url, rebuild_ours_gc_on, rooms)
    out["ours_gc_on_events_per_s"] = round(events / took)
    took, _ = timed(url, replay_per_room, rooms)
    out["replay_per_room_events_per_s"] = round(events / took)
    took, applied = timed(url, run_consumers, rooms)
    if applied != events * len(PROJECTIONS):
        raise RuntimeError(f"consumers applied {applied} records, expected {events * len(PROJECTIONS)}")
    out["consumers_events_per_s"] = round(events / took)
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with RedisServer("bench-replay-") as server:
        asyncio.run(check_format(server.url))
        t = time.perf_counter()
        counts = load(server.port, args.events, args.rooms, args.seed)
        load_seconds = time.perf_counter() - t
        found = run_rounds(server.url, counts, args.rounds)
        extra = {} if args.quick else informational(server.url, counts)
        if args.archived_half:  # last: it moves rooms out of Redis
            from replay_archived import measure_archived_half

            _, ours = timed(server.url, rebuild_ours, list(counts))
            extra.update(measure_archived_half(server.url, counts, args.rounds, PROJECTIONS, timed, ours))
            found["problems"] += [] if extra["archived_half_agree"] else ["archived-half rebuild differs from ours"]
        _, version = timed(server.url, _redis_version, [])
    return {"counts": counts, "load_seconds": load_seconds, "informational": extra, "redis_version": version,
            **found}


async def _redis_version(redis: aioredis.Redis, _: list[str]) -> str:
    return str((await redis.info("server"))["redis_version"])


def report(args: argparse.Namespace, m: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    events = sum(m["counts"].values())
    best, median = {}, {}
    for name, seconds in m["seconds"].items():
        best[name], median[name] = best_and_median(events, seconds)
    vs_pipelined = ratio(best["ours"], best["pipelined"])
    problems = m["problems"]
    return {
        "bench": "replay", "events": events, "rooms": len(m["counts"]), "rounds": args.rounds, "seed": args.seed,
        "projections": [p.name for p in PROJECTIONS], "redis_version": m["redis_version"], **env,
        "load_seconds": round(m["load_seconds"], 2),
        "ours_events_per_s": best["ours"], "pipelined_events_per_s": best["pipelined"],
        "naive_events_per_s": best["naive"],
        "ours_vs_pipelined": vs_pipelined, "ours_vs_naive": ratio(best["ours"], best["naive"]),
        "pipelined_vs_naive": ratio(best["pipelined"], best["naive"]),
        "target_ours_vs_pipelined": TARGET_OURS_VS_PIPELINED,
        "meets_target": vs_pipelined is not None and vs_pipelined >= TARGET_OURS_VS_PIPELINED,
        "states_agree": not m["disagreeing_rooms"], "disagreeing_rooms": m["disagreeing_rooms"][:5],
        "pass": not problems, "problems": problems[:10],
        "median_per_s": median, "seconds": {k: rounded(v) for k, v in m["seconds"].items()},
        "baseline": {"rooms_per_trip": ROOMS_PER_TRIP, "count": PAGE, "gc": "paused, like ours"},
        **m["informational"],
        **({"archived_half_vs_all_in_redis": ratio(m["informational"]["archived_half_events_per_s"], best["ours"])}
           if "archived_half_events_per_s" in m["informational"] else {}),
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--rooms", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=2, help="rounds; every contender once per round, the best counts")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--archived-half", action="store_true",
                   help="then archive every second room and rebuild all through the archive (replay_many(archive=))")
    p.add_argument("--quick", action="store_true",
                   help="skip the informational runs (ours with GC on, per-room replay, consumers)")
    args = p.parse_args()
    if args.rooms < 1 or args.rounds < 1:
        p.error("--rooms and --rounds must be positive")
    if args.events < args.rooms * 8:
        p.error("need at least 8 events per room (a call needs a start and an end)")
    return args


def main() -> int:
    args = parse_args()
    env = environment()  # before the run: the load average says what else shares the machine
    result = report(args, measure(args), env)
    emit(result)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
