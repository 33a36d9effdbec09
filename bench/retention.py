"""Redis memory with retention on: does ``used_memory`` come back after thousands of calls are archived?

A private redis-server; ``--calls`` short synthetic calls (a session, two people joining, talking in data
messages and leaving, the session ending: ``--records`` records each) written through the EventWriter as the
daemon writes them, in waves of ``--wave`` calls; after each wave the two built-in consumers catch up
(``until_caught_up``) and the archiver runs a pass (``archive_after`` 0). Prints ``used_memory`` before the first
wave (after a warm-up wave that is archived too, so that Redis' own structures exist), after the last (while
the tombstones archived rooms leave are still there: each room's last seq, so that a room joined again soon
continues without looking into the archive) and once the tombstones have expired (``--tombstone-ttl``; the
deployment's default is a day, ``retention.tombstone_ttl``), the growth, and the archive's size. Every archived room
is checked to replay to the state its consumers held, and a sample of rooms is written again after their
tombstones expired: each must continue at its archived last seq + 1 (the daemon's SequenceRestorer).

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
from eventstore.keys import Keys  # noqa: E402
from eventstore.projections.callstate import CallStateMachine  # noqa: E402
from eventstore.projections.participants import ParticipantTracker  # noqa: E402
from eventstore.records import (  # noqa: E402
    Connected, DataReceived, ParticipantConnected, ParticipantLeft, SessionEnded, SessionStarted,
)
from eventstore.replay import replay  # noqa: E402
from eventstore.reader import RoomReader  # noqa: E402
from eventstore.retention import Archiver, SequenceRestorer  # noqa: E402
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


async def tombstones_gone(redis, rooms: list[str], seconds: float) -> None:
    keys = [Keys().archived(room) for room in rooms]
    deadline = time.monotonic() + seconds
    while any([await redis.exists(*keys[i : i + 500]) for i in range(0, len(keys), 500)]):
        if time.monotonic() > deadline:
            raise SystemExit(f"the tombstones had not expired {seconds:.0f} s after their TTL")
        await asyncio.sleep(0.2)


async def written_again(redis, archive, rooms: list[str], records: int) -> int:
    """Rooms written again after their tombstones expired, as the daemon writes them; how many continue wrongly."""
    restorer = SequenceRestorer(redis, archive)
    writer = EventWriter(redis, producer="bench")
    await writer.start()
    for room in rooms:
        await restorer.restore(room)
        await writer.append(SessionStarted(room=room, session=f"{room}#2", ts=time.time(), cause="join"))
    assert await writer.flush(60)
    await writer.aclose()
    reader = RoomReader(redis, archive=archive)
    wrong = 0
    for room in rooms:
        wrong += [r.seq for r in await reader.read(room)] != list(range(1, records + 2))
    return wrong


async def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="rs-retention-") as tmp, RedisServer("rs-retention") as server:
        redis = connect(server.url)
        archive = DirectoryArchive(Path(tmp) / "archive", fsync=False)
        archiver = Archiver(redis, archive, archive_after=0, tombstone_ttl=args.tombstone_ttl)
        await wave(redis, archiver, [f"warmup-{i}" for i in range(args.wave)], args.records)
        await tombstones_gone(redis, [f"warmup-{i}" for i in range(args.wave)], args.tombstone_ttl + 60)
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
        held_tombstones = await used_memory(redis)
        keys_held = await redis.dbsize()
        await tombstones_gone(redis, [f"call-{i}" for i in range(args.calls)], args.tombstone_ttl + 60)
        after = await used_memory(redis)
        keys = await redis.dbsize()
        sample = [f"call-{i}" for i in range(0, args.calls, max(1, args.calls // 20))]
        wrong_seqs = await written_again(redis, archive, sample, args.records)
        size = sum(f.stat().st_size for f in Path(tmp, "archive").rglob("*") if f.is_file())
        await redis.aclose()
    growth = (after - before) / before * 100
    return {"calls": args.calls, "records_per_call": args.records, "archived": archived,
            "tombstone_ttl_s": args.tombstone_ttl, "used_memory_before": before,
            "used_memory_after_tombstones_held": held_tombstones,
            "growth_pct_tombstones_held": round((held_tombstones - before) / before * 100, 2),
            "bytes_per_tombstone": round((held_tombstones - after) / args.calls, 1), "keys_left_tombstones_held":
            keys_held, "used_memory_after": after, "growth_pct": round(growth, 2),
            "bytes_left_per_call": round((after - before) / args.calls, 1), "keys_left": keys,
            "archive_bytes": size, "archive_bytes_per_record": round(size / (args.calls * args.records), 1),
            "replay_mismatches": mismatched, "rooms_written_again": len(sample),
            "written_again_not_continuing": wrong_seqs, "seconds": round(seconds, 1), "max_growth_pct": 10.0,
            "pass": growth <= 10.0 and archived == args.calls and mismatched == 0 and wrong_seqs == 0,
            "environment": environment()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--records", type=int, default=20, help="records per call (at least 8)")
    p.add_argument("--wave", type=int, default=200, help="calls written before the consumers and the archiver run")
    p.add_argument("--tombstone-ttl", type=float, default=60.0,
                   help="s the tombstones of archived rooms live (retention.tombstone_ttl; the default there is a day)")
    args = p.parse_args(argv)
    if args.calls < 1 or args.records < 8 or args.wave < 1 or not 0 < args.tombstone_ttl <= 600:
        p.error("--calls and --wave must be positive, --records at least 8, --tombstone-ttl in (0, 600]")
    result = asyncio.run(run(args))
    emit(result)
    return 0 if result["archived"] == args.calls and not result["replay_mismatches"] \
        and not result["written_again_not_continuing"] else 1


if __name__ == "__main__":
    sys.exit(main())
