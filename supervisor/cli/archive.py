"""``room-supervisor archive``: ended rooms from Redis to the archive (:mod:`eventstore.retention`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time


from eventstore.connection import connect
from eventstore.keys import Keys
from eventstore.retention import Archiver, PassResult

from ..errors import REDIS_ERRORS, CommandError
from ..settings import Settings, archive_of
from .output import emit
from .rooms import redis_failed


def _report(result: PassResult, as_json: bool) -> None:
    if as_json:
        emit(json.dumps({"at": time.time(), "archived": result.archived, "skipped": result.skipped,
                         "trimmed": result.trimmed, "feed_trimmed": result.feed_trimmed}, ensure_ascii=False))
        return
    for room in result.archived:
        emit(f"archived {room!r}")
    left = ", ".join(f"{n} {why}" for why, n in sorted(result.skipped.items())) or "none"
    emit(f"{len(result.archived)} room(s) archived; left in Redis: {left}; {result.trimmed} record(s) of rooms "
         f"that live on archived and trimmed; {result.feed_trimmed} feed notification(s) every consumer had "
         "handled trimmed")


async def cmd_archive(args: argparse.Namespace, settings: Settings) -> int:
    archive = archive_of(settings)
    if archive is None:
        raise CommandError("no archive: set [retention] archive_dir (RS_RETENTION_ARCHIVE_DIR)", 2)
    redis = connect(settings.redis.url)
    archiver = Archiver(redis, archive, keys=Keys(settings.redis.prefix),
                        projections=settings.retention.projections, archive_after=settings.retention.archive_after,
                        lock_ttl=settings.retention.lock_ttl, keep_records=settings.retention.keep_records,
                        tombstone_ttl=settings.retention.tombstone_ttl)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if args.follow:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    try:
        while True:
            started = loop.time()
            _report(await archiver.run_pass(), args.json)
            if not args.follow:
                return 0
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, settings.retention.interval - (loop.time() - started)))
            except asyncio.TimeoutError:
                continue
            return 0
    except REDIS_ERRORS as exc:
        raise redis_failed(settings, exc) from None
    finally:
        if args.follow:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        await redis.aclose()
