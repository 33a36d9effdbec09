"""Redis memory with retention on: does ``used_memory`` come back after thousands of calls are archived?

A private redis-server; ``--calls`` short synthetic calls (a session, two people joining, talking in data
messages and leaving, the session ending: ``--records`` records each) written through the EventWriter as the
daemon writes them, in waves of ``--wave`` calls; after each wave the two built-in consumers catch up
(``until_caught_up``) and the archiver runs a pass (``archive_after`` 0). Prints ``used_memory`` before the first
wave (after a warm-up wave that is archived too, so that Redis' own structures exist) and after the last, the
growth, the per-call remainder (the tombstone each archived room leaves: its last seq, so that a room joined again
continues) and the archive's size; every archived room is checked to replay to the state its consumers held.

    python bench/retention.py                 # 2,000 calls
    python bench/retention.py --calls 200     # quick
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, RedisServer, emit, environment

sys.path.insert(0, str(REPO_ROOT))

from eventstore.archive import DirectoryArchive  # noqa: E402
from eventstore.connection import connect  # noqa: E402
from eventstore.consumer import ProjectionRunner  # noqa: E402
from eventstore.projections.callstate import CallStateMachine  # noqa: E402
from eventstore.projections.participants import ParticipantTracker  # noqa: E402
from eventstore.records import (  # noqa: E402
    Connected, DataReceived, ParticipantConnected, ParticipantLeft, SessionEnded, SessionStarted,
)
from eventstore.replay import replay  # noqa: E402
from eventstore.retention import Archiver  # noqa: E402
from eventstore.writer import EventWriter  # noqa: E402

PROJECTIONS = (ParticipantTracker(), CallStateMachine())


def call(room: str, records: int, t0: float) -> list:
    """One short call of about ``records`` records."""
    s = dict(room=room, session=f"{room}#1")
    out = [SessionStarted(**s, ts=t0, identity="rs-bot-x", pipeline="listen", cause="join"),
           Connected(**s, ts=t0 + 0.1, identity="rs-bot-x")]
    for who in ("alice", "bob"):
        out.append(ParticipantConnected(**s, ts=t0 + 0.2, participant_id=who, participant_sid=f"PA_{who}"))
    n = 0
    while len(out) < records - 3:
        out.append(DataReceived(**s, ts=t0 + 0.3 + n * 0.01, participant_id=("alice", "bob")[n % 2],
                                data=f"message {n} of {room}".encode(), topic="chat"))
        n += 1
    out += [ParticipantLeft(**s, ts=t0 + 5, participant_id="alice", disconnect_reason="CLIENT_INITIATED"),
            ParticipantLeft(**s, ts=t0 + 5, participant_id="bob", disconnect_reason="CLIENT_INITIATED"),
            SessionEnded(**s, ts=t0 + 6, reason="left")]
    return out


async def wave(redis, archiver: Archiver, rooms: list[str], records: int) -> tuple[int, dict]:
    writer = EventWriter(redis, producer="bench")
    await writer.start()
    for room in rooms:
        for record in call(room, records, time.time()):
            await writer.append(record)
    assert await writer.flush(60)
    await writer.aclose()
    held = {}
    for p in PROJECTIONS:
        await ProjectionRunner(redis, p).run(until_caught_up=True)
    for room in rooms:  # what the consumers hold, to compare with the archive's replay
        held[room] = [await replay(redis, room, p) for p in PROJECTIONS]
    result = await archiver.run_pass()
    return len(result.archived), held


async def used_memory(redis) -> int:
    await redis.memory_purge()
    return int((await redis.info("memory"))["used_memory"])


async def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="rs-retention-") as tmp, RedisServer("rs-retention") as server:
        redis = connect(server.url)
        archive = DirectoryArchive(Path(tmp) / "archive", fsync=False)
        archiver = Archiver(redis, archive, archive_after=0)
        await wave(redis, archiver, [f"warmup-{i}" for i in range(args.wave)], args.records)
        before = await used_memory(redis)
        archived, mismatched = 0, 0
        t0 = time.perf_counter()
        for start in range(0, args.calls, args.wave):
            rooms = [f"call-{i}" for i in range(start, min(args.calls, start + args.wave))]
            n, held = await wave(redis, archiver, rooms, args.records)
            archived += n
            for room in rooms[:: max(1, len(rooms) // 10)]:  # a sample of each wave, replayed from the archive
                again = [await replay(redis, room, p, archive=archive) for p in PROJECTIONS]
                mismatched += again != held[room]
        seconds = time.perf_counter() - t0
        after = await used_memory(redis)
        size = sum(f.stat().st_size for f in Path(tmp, "archive").rglob("*") if f.is_file())
        keys = await redis.dbsize()
        await redis.aclose()
    growth = (after - before) / before * 100
    return {"calls": args.calls, "records_per_call": args.records, "archived": archived,
            "used_memory_before": before, "used_memory_after": after, "growth_pct": round(growth, 2),
            "bytes_left_per_call": round((after - before) / args.calls, 1), "keys_left": keys,
            "archive_bytes": size, "archive_bytes_per_record": round(size / (args.calls * args.records), 1),
            "replay_mismatches": mismatched, "seconds": round(seconds, 1), "max_growth_pct": 10.0,
            "pass": growth <= 10.0 and archived == args.calls and mismatched == 0, "environment": environment()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--records", type=int, default=20, help="records per call (at least 8)")
    p.add_argument("--wave", type=int, default=200, help="calls written before the consumers and the archiver run")
    args = p.parse_args(argv)
    if args.calls < 1 or args.records < 8 or args.wave < 1:
        p.error("--calls and --wave must be positive, --records at least 8")
    result = asyncio.run(run(args))
    emit(result)
    return 0 if result["archived"] == args.calls and not result["replay_mismatches"] else 1


if __name__ == "__main__":
    sys.exit(main())
