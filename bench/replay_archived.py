"""``bench/replay.py --archived-half``: the same rebuild with every second room archived (moved out of Redis into a
directory archive by :class:`eventstore.retention.Archiver`), read back through ``replay_many(archive=...)``."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from eventstore.archive import DirectoryArchive
from eventstore.connection import connect
from eventstore.consumer import replay_many
from eventstore.retention import Archiver


async def _archive_half(url: str, rooms: list[str], path: Path) -> int:
    redis = connect(url)
    try:
        archiver = Archiver(redis, DirectoryArchive(path, fsync=False), projections=(), archive_after=0)
        done = 0
        for room in rooms[::2]:
            done += await archiver.archive_room(room) == ""
        return done
    finally:
        await redis.aclose()


def measure_archived_half(url: str, counts: dict[str, int], rounds: int, projections: Any, timed: Any,
                          all_in_redis: Any) -> dict[str, Any]:
    """Archive every second room, then rebuild all rooms ``rounds`` times through the archive; the states must
    equal ``all_in_redis`` (ours before archiving)."""
    rooms = list(counts)
    events = sum(counts.values())
    with tempfile.TemporaryDirectory(prefix="rs-replay-archive-") as tmp:
        archived = asyncio.run(_archive_half(url, rooms, Path(tmp)))
        archive = DirectoryArchive(Path(tmp), fsync=False)

        async def rebuild(redis, names):
            return await replay_many(redis, names, projections, archive=archive)

        best = None
        wrong: list[str] = []
        for _ in range(rounds):
            took, states = timed(url, rebuild, rooms)
            best = took if best is None else min(best, took)
            wrong = [room for room in rooms if states.get(room) != all_in_redis.get(room)]
            del states
    return {"archived_rooms": archived, "archived_half_events_per_s": round(events / best),
            "archived_half_disagreeing_rooms": wrong[:5], "archived_half_agree": not wrong}
