"""Append throughput: our EventWriter against the strongest plain-redis-py baseline, a floor and a ceiling.

    python bench/append.py                    # 50,000 events, 100 rooms, 3 rounds, stock asyncio
    python bench/append.py --uvloop           # the daemon's event loop
    python bench/append.py --events 200000 --rooms 1000 --rounds 5
    python bench/append.py --cluster          # also on a 3-master Redis Cluster (3 replicas), beside one server

Starts its own redis-server (free 127.0.0.1 port, temporary directory, no persistence) and, per round, against
that server with FLUSHALL in between, in turn:

- ``ours``: ``EventWriter.append`` for every record, then ``flush()`` (sequence numbers, batch tokens, feed
  notifications and the room index included);
- ``pipelined``: the baseline a competent user would write: redis-py asyncio ``pipeline(transaction=False)``,
  1,000 XADD per round trip, records encoded with msgspec, to the same stream keys with the same MAXLEN policy
  (none unless ``--maxlen``); no sequence numbers, no feed, no dedup;
- ``naive``: the floor: one awaited XADD per record, same entries as ``pipelined``;
- ``ceiling``: ``redis-benchmark -P 64`` sending XADDs of a typical entry of this workload (100 rooms' keys):
  what this redis-server takes when the client costs next to nothing.

With ``--cluster``, the same rounds (but the ceiling) run again on a Redis Cluster of 3 masters with a replica each
(``supervisor.devstack.redis_cluster``, no persistence), through redis-py's cluster client for every contender:
``cluster_ours``, ``cluster_pipelined`` (its cluster pipeline: each node gets its XADDs in one round trip),
``cluster_naive``; ``--wait-replicas 1`` makes ours wait for a replica after each round trip there.

The best round of each counts (medians are printed too). After every round the streams are read back and
checked: each contender stored every record once, in order, intact (ours also with consecutive sequence
numbers), and redis-benchmark stored as many entries as it reported requests.

Prints one JSON object (see bench/README.md). Exit status: 0 when every correctness check passed, whatever
the ratios (``target_ours_vs_pipelined`` is a goal for later work, reported in ``meets_target``, not a gate);
1 when a check failed (``pass`` is false, ``problems`` says what) or the run itself failed; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis

from common import LOOPBACK, RedisServer, best_and_median, emit, environment, ratio, rounded  # first: repo on path
from eventstore.codec import decode_entry, decode_record
from eventstore.connection import connect
from eventstore.keys import Keys
from eventstore.records import (
    AudioTrackSubscribed, CallStateUpdated, DataReceived, ParticipantConnected, ParticipantLeft, Record, tag_of,
)
from eventstore.writer import EventWriter
from supervisor.devstack.redis_cluster import RedisCluster

TARGET_OURS_VS_PIPELINED = 3.0
PIPELINE_SIZE = 1000  # XADDs per round trip of the pipelined baseline
CEILING_PIPELINE = 64
KEYS = Keys()
CONTENDERS = ("ours", "pipelined", "naive", "ceiling")
CLUSTER_CONTENDERS = ("cluster_ours", "cluster_pipelined", "cluster_naive")


def make_records(n: int, rooms: int, seed: int = 1) -> list[Record]:
    """A realistic mix: participants joining and leaving, tracks, call state, small data packets."""
    rnd = random.Random(seed)
    names = [f"support-call-{i:04d}-{rnd.randrange(16**6):06x}" for i in range(rooms)]
    out: list[Record] = []
    t0 = time.time()
    for i in range(n):
        envelope = {"room": names[i % rooms], "session": f"sess-{i % rooms:04d}-a1b2c3", "ts": t0 + i * 1e-4,
                    "producer": "bench-daemon-1", "epoch": 7}
        who = f"user-{rnd.randrange(1000):04d}"
        kind = rnd.random()
        if kind < 0.25:
            out.append(ParticipantConnected(**envelope, participant_id=who, participant_sid=f"PA_{i:012x}",
                                            kind="standard"))
        elif kind < 0.45:
            out.append(AudioTrackSubscribed(**envelope, participant_id=who, participant_sid=f"PA_{i:012x}",
                                            track_sid=f"TR_{i:012x}"))
        elif kind < 0.60:
            out.append(CallStateUpdated(**envelope, state="joined", previous="joining", phase="active",
                                        cause="participant_connected"))
        elif kind < 0.75:
            out.append(ParticipantLeft(**envelope, participant_id=who, participant_sid=f"PA_{i:012x}",
                                       disconnect_reason="CLIENT_INITIATED"))
        else:
            payload = json.dumps({"kind": "transcript", "seq": i, "text": "hello there " * 4}).encode()
            out.append(DataReceived(**envelope, participant_id=who, data=payload, topic="chat"))
    return out


# --- the contenders -----------------------------------------------------------------------------------------


def baseline_fields(record: Record, encode: Any) -> dict[str, str | bytes]:
    """The baseline's entry: the record's type, its msgspec JSON, and a data packet's payload as its own field
    (the layout of ours, minus the sequence number)."""
    if type(record) is DataReceived:
        rec = encode(msgspec.structs.replace(record, data=b""))
        return {"type": tag_of(record), "rec": rec, "data": record.data}
    return {"type": tag_of(record), "rec": encode(record)}


async def run_ours(r: aioredis.Redis, records: list[Record], maxlen: int,
                   wait_replicas: int = 0) -> tuple[float, dict[str, int]]:
    # A generous max_block: measure throughput under back-pressure, never the no-spool overflow error that a
    # slow round trip on a busy machine could otherwise trigger.
    writer = EventWriter(r, producer="bench", max_block=30.0, stream_maxlen=maxlen, wait_replicas=wait_replicas)
    await writer.start()
    await writer.flush()  # loads the feed partition count outside the timed part
    t = time.perf_counter()
    for rec in records:
        await writer.append(rec)
    ok = await writer.flush(timeout=300)
    elapsed = time.perf_counter() - t
    await writer.aclose()
    if not ok:
        raise RuntimeError(f"writer did not flush within 300 s: {writer.stats}")
    return elapsed, {k: v for k, v in vars(writer.stats).items() if v}


async def run_pipelined(r: aioredis.Redis, records: list[Record], maxlen: int) -> float:
    encode = msgspec.json.Encoder().encode
    trim = {"maxlen": maxlen, "approximate": True} if maxlen else {}
    keys: dict[str, str] = {}
    t = time.perf_counter()
    for start in range(0, len(records), PIPELINE_SIZE):
        pipe = r.pipeline(transaction=False)
        for rec in records[start : start + PIPELINE_SIZE]:
            key = keys.get(rec.room)
            if key is None:
                key = keys[rec.room] = KEYS.events(rec.room)
            pipe.xadd(key, baseline_fields(rec, encode), **trim)
        await pipe.execute()
    return time.perf_counter() - t


async def run_naive(r: aioredis.Redis, records: list[Record], maxlen: int) -> float:
    encode = msgspec.json.Encoder().encode
    trim = {"maxlen": maxlen, "approximate": True} if maxlen else {}
    t = time.perf_counter()
    for rec in records:
        await r.xadd(KEYS.events(rec.room), baseline_fields(rec, encode), **trim)
    return time.perf_counter() - t


def ceiling_argv(port: int, args: argparse.Namespace, typical: Record) -> list[str | bytes]:
    """redis-benchmark XADDing ``typical``'s entry (as ours stores it) to ``--rooms`` room streams."""
    fields = baseline_fields(typical, msgspec.json.encode)
    entry: list[str | bytes] = ["type", fields["type"], "seq", "1", "rec", fields["rec"]]
    if "data" in fields:
        entry += ["data", fields["data"]]
    trim: list[str | bytes] = ["MAXLEN", "~", str(args.maxlen)] if args.maxlen else []
    return [shutil.which("redis-benchmark") or "redis-benchmark", "-h", LOOPBACK, "-p", str(port),
            "-n", str(args.ceiling_requests), "-c", str(args.ceiling_clients), "-P", str(CEILING_PIPELINE),
            "-r", str(args.rooms), "--csv", "XADD", ceiling_key("__rand_int__"), *trim, "*", *entry]


def ceiling_key(room_number: str) -> str:
    return f"{KEYS.prefix}:room:{{bench-{room_number}}}:events"


def run_ceiling(argv: list[str | bytes]) -> float:
    """redis-benchmark's requests per second (its CSV: the command's row, rps in the 7th column from the end;
    the command itself, first column, may hold quotes and commas)."""
    done = subprocess.run(argv, capture_output=True, timeout=600, check=False)
    rows = [line for line in done.stdout.decode(errors="replace").splitlines() if line.strip()]
    if done.returncode != 0 or len(rows) < 2:
        raise RuntimeError(f"redis-benchmark failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    return float(rows[-1].rsplit(",", 7)[1].strip('"'))


def typical_record(records: list[Record]) -> Record:
    """The record whose entry size is nearest the workload's mean entry size."""
    encode = msgspec.json.encode
    sizes = [sum(len(k) + len(v) for k, v in baseline_fields(r, encode).items()) for r in records[:10_000]]
    mean = sum(sizes) / len(sizes)
    return records[min(range(len(sizes)), key=lambda i: abs(sizes[i] - mean))]


# --- correctness checks -------------------------------------------------------------------------------------


def expected_by_room(records: list[Record], numbered: bool) -> dict[str, list[Record]]:
    """Each room's records in append order; ``numbered``: with the sequence numbers ours assigns (1, 2, ...)."""
    out: dict[str, list[Record]] = {}
    for rec in records:
        room = out.setdefault(rec.room, [])
        room.append(msgspec.structs.replace(rec, seq=len(room) + 1) if numbered else rec)
    return out


def _decode(fields: dict[bytes, bytes]) -> Record:
    if b"seq" in fields:
        return decode_entry(fields)  # ours: checked and decoded by the public codec
    record = decode_record(fields[b"rec"])
    return msgspec.structs.replace(record, data=fields[b"data"]) if b"data" in fields else record


async def check_streams(r: aioredis.Redis, expected: dict[str, list[Record]], maxlen: int) -> list[str]:
    """Problems with what the room streams hold (empty: each holds exactly the expected records, in order;
    with ``maxlen`` only the newest ones are expected, at least ``maxlen`` of them)."""
    pipe = r.pipeline(transaction=False)
    for room in expected:
        pipe.xrange(KEYS.events(room))
    problems = []
    for (room, want), entries in zip(expected.items(), await pipe.execute()):
        got = [_decode(fields) for _, fields in entries]
        if maxlen and min(len(want), maxlen) <= len(got) <= len(want):
            want = want[len(want) - len(got) :]
        if got != want:
            problems.append(f"room {room!r}: stored {len(got)} records, expected {len(want)}, or they differ")
    return problems[:5]


async def check_ours_meta(r: aioredis.Redis, expected: dict[str, list[Record]]) -> list[str]:
    pipe = r.pipeline(transaction=False)
    for room in expected:
        pipe.hget(KEYS.meta(room), "seq")
    seqs = await pipe.execute()
    return [f"room {room!r}: meta seq {seq!r}, expected {len(want)}"
            for (room, want), seq in zip(expected.items(), seqs) if int(seq or 0) != len(want)][:5]


async def check_ceiling(r: aioredis.Redis, args: argparse.Namespace) -> list[str]:
    """redis-benchmark stored what it sent: ``-n`` XADDs, rounded up to whole pipelines of each client."""
    pipe = r.pipeline(transaction=False)
    for i in range(args.rooms):
        pipe.xlen(ceiling_key(f"{i:012d}"))
    stored = sum(await pipe.execute())
    sent = range(args.ceiling_requests, args.ceiling_requests + args.ceiling_clients * CEILING_PIPELINE)
    if stored in sent or (args.maxlen and stored < sent.stop):
        return []
    return [f"ceiling: {stored} entries stored for {args.ceiling_requests} requests"]


# --- the run ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One benchmark run: its inputs, and what the rounds found."""

    args: argparse.Namespace
    records: list[Record]
    ceiling_argv: list[str | bytes] = field(default_factory=list)
    redis_version: str = ""
    seconds: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in CONTENDERS})
    problems: list[str] = field(default_factory=list)
    ours_stats: dict[str, int] = field(default_factory=dict)
    cluster_stats: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.args.cluster:
            self.seconds.update({name: [] for name in CLUSTER_CONTENDERS})
        self.expected_ours = expected_by_room(self.records, numbered=True)
        self.expected_plain = expected_by_room(self.records, numbered=False)


async def one_round(r: aioredis.Redis, run: Run) -> None:
    """Each contender once, FLUSHALL before each, its streams checked after it."""
    maxlen = run.args.maxlen
    await r.flushall()
    elapsed, run.ours_stats = await run_ours(r, run.records, maxlen)
    run.seconds["ours"].append(elapsed)
    run.problems += await check_streams(r, run.expected_ours, maxlen)
    run.problems += await check_ours_meta(r, run.expected_ours)
    for name, contender in (("pipelined", run_pipelined), ("naive", run_naive)):
        await r.flushall()
        run.seconds[name].append(await contender(r, run.records, maxlen))
        run.problems += [f"{name}: {p}" for p in await check_streams(r, run.expected_plain, maxlen)]
    await r.flushall()
    rps = await asyncio.to_thread(run_ceiling, run.ceiling_argv)
    run.seconds["ceiling"].append(run.args.ceiling_requests / rps)
    run.problems += await check_ceiling(r, run.args)
    await r.flushall()


async def cluster_round(r: Any, run: Run) -> None:
    """Ours, pipelined and naive on the cluster (no ceiling), each after a FLUSHALL of every master."""
    maxlen = run.args.maxlen
    await r.flushall()
    elapsed, run.cluster_stats = await run_ours(r, run.records, maxlen, run.args.wait_replicas)
    run.seconds["cluster_ours"].append(elapsed)
    run.problems += [f"cluster: {p}" for p in await check_streams(r, run.expected_ours, maxlen)]
    run.problems += [f"cluster: {p}" for p in await check_ours_meta(r, run.expected_ours)]
    for name, contender in (("cluster_pipelined", run_pipelined), ("cluster_naive", run_naive)):
        await r.flushall()
        run.seconds[name].append(await contender(r, run.records, maxlen))
        run.problems += [f"{name}: {p}" for p in await check_streams(r, run.expected_plain, maxlen)]
    await r.flushall()


async def measure(run: Run) -> Run:
    with RedisServer("bench-append-") as server:
        run.ceiling_argv = ceiling_argv(server.port, run.args, typical_record(run.records))
        r = connect(server.url)
        try:
            run.redis_version = (await r.info("server"))["redis_version"]
            for _ in range(run.args.rounds):  # contenders take turns, so background load hits them alike
                await one_round(r, run)
        finally:
            await r.aclose()
    if run.args.cluster:
        with tempfile.TemporaryDirectory(prefix="bench-append-cluster-") as tmp:
            cluster = RedisCluster(Path(tmp), appendonly=False)
            try:
                await asyncio.to_thread(cluster.start)
                r = connect(cluster.url)
                try:
                    for _ in range(run.args.rounds):
                        await cluster_round(r, run)
                finally:
                    await r.aclose()
            finally:
                cluster.stop()
    return run


def report(run: Run, env: dict[str, Any]) -> dict[str, Any]:
    args = run.args
    counts = dict.fromkeys(CONTENDERS, args.events) | {"ceiling": args.ceiling_requests}
    best, median = {}, {}
    for name, seconds in run.seconds.items():
        best[name], median[name] = best_and_median(counts.get(name, args.events), seconds)
    vs_pipelined = ratio(best["ours"], best["pipelined"])
    return {
        "bench": "append", "events": args.events, "rooms": args.rooms, "rounds": args.rounds,
        "maxlen": args.maxlen, "event_loop": "uvloop" if args.uvloop else "asyncio",
        "redis_version": run.redis_version, **env,
        "ours_events_per_s": best["ours"], "pipelined_events_per_s": best["pipelined"],
        "naive_events_per_s": best["naive"], "ceiling_xadd_per_s": best["ceiling"],
        "ours_vs_pipelined": vs_pipelined,
        "ours_share_of_ceiling": ratio(best["ours"], best["ceiling"]),
        "pipelined_share_of_ceiling": ratio(best["pipelined"], best["ceiling"]),
        "ours_vs_naive": ratio(best["ours"], best["naive"]),
        "target_ours_vs_pipelined": TARGET_OURS_VS_PIPELINED,
        "meets_target": vs_pipelined is not None and vs_pipelined >= TARGET_OURS_VS_PIPELINED,
        "pass": not run.problems, "problems": run.problems[:10],
        "median_per_s": median, "seconds": {k: rounded(v) for k, v in run.seconds.items()},
        "ceiling": ceiling_summary(run),
        "ours_last_round": run.ours_stats,
        **(cluster_report(run, best) if args.cluster else {}),
    }


def cluster_report(run: Run, best: dict[str, Any]) -> dict[str, Any]:
    return {"cluster": {"masters": 3, "replicas_per_master": 1, "wait_replicas": run.args.wait_replicas,
                        "ours_events_per_s": best["cluster_ours"],
                        "pipelined_events_per_s": best["cluster_pipelined"],
                        "naive_events_per_s": best["cluster_naive"],
                        "ours_vs_pipelined": ratio(best["cluster_ours"], best["cluster_pipelined"]),
                        "ours_vs_single_node": ratio(best["cluster_ours"], best["ours"]),
                        "ours_last_round": run.cluster_stats}}


def ceiling_summary(run: Run) -> dict[str, Any]:
    argv = run.ceiling_argv
    entry = argv[argv.index("*") + 1 :]
    return {"requests": run.args.ceiling_requests, "clients": run.args.ceiling_clients,
            "pipeline": CEILING_PIPELINE, "entry_type": entry[1], "entry_bytes": sum(len(a) for a in entry)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--rooms", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="rounds; every contender once per round, the best counts")
    p.add_argument("--maxlen", type=int, default=0, help="approximate stream MAXLEN for every contender (0: none)")
    p.add_argument("--ceiling-requests", type=int, default=500_000, help="redis-benchmark -n")
    p.add_argument("--ceiling-clients", type=int, default=50, help="redis-benchmark -c")
    p.add_argument("--cluster", action="store_true",
                   help="also run ours, pipelined and naive on a 3-master Redis Cluster (3 replicas)")
    p.add_argument("--wait-replicas", type=int, default=0, choices=(0, 1),
                   help="on the cluster: ours waits for this many replicas after each round trip (redis.wait_replicas)")
    p.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=False,
                   help="run on uvloop (the daemon's loop); default: stock asyncio")
    args = p.parse_args()
    if min(args.events, args.rooms, args.rounds, args.ceiling_requests, args.ceiling_clients) < 1:
        p.error("sizes must be positive")
    return args


def main() -> int:
    args = parse_args()
    env = environment()  # before the run: the load average says what else shares the machine
    run = Run(args, make_records(args.events, args.rooms))
    if args.uvloop:
        import uvloop

        uvloop.run(measure(run))
    else:
        asyncio.run(measure(run))
    result = report(run, env)
    emit(result)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
