"""The daemon's spool file and its lock; spools left behind by daemons that died are replayed.

Each daemon writes to ``<spool_dir>/<daemon id>.spool`` and holds an exclusive ``flock`` on
``<daemon id>.lock`` while it runs, so two daemons with the same id on one host refuse to share a spool. A
spool whose lock nobody holds belongs to a daemon that is gone (a ``kill -9``, a crash, or an earlier run
with another id): at start the daemon replays it to Redis, before claiming any room, so its records still
carry the epochs they were written with, and deletes it once everything is in Redis. Its own spool (left by
an earlier run with the same id) is replayed before the first claim too.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from eventstore.keys import Keys, decode_name, encode_name
from eventstore.spool import Spool
from eventstore.writer import EventWriter

from ..errors import SupervisorError

log = logging.getLogger("supervisor")


class SpoolUnavailable(SupervisorError):
    """The spool directory cannot be used, or another running daemon has the same id."""


class SpoolLock:
    """An exclusive, non-blocking ``flock`` on ``<dir>/<name>.lock``; released when the process dies."""

    def __init__(self, spool_dir: Path, name: str) -> None:
        self.path = spool_dir / f"{name}.lock"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self, *, remove: bool = False) -> None:
        if self._fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def own_spool(spool_dir: str, daemon_id: str) -> tuple[Path, SpoolLock]:
    """This daemon's spool path, with its lock held. Raises :class:`SpoolUnavailable`."""
    directory = Path(spool_dir)
    name = encode_name(daemon_id)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = SpoolLock(directory, name)
        held = lock.try_acquire()
    except OSError as exc:
        raise SpoolUnavailable(f"spool directory {directory} cannot be used: {exc}") from None
    if not held:
        raise SpoolUnavailable(f"another daemon with id {daemon_id!r} is running on this host "
                               f"(it holds {lock.path}); give each daemon its own daemon.id")
    return directory / f"{name}.spool", lock


def _remove_spool(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".offset").unlink(missing_ok=True)


async def replay_before_claims(redis: aioredis.Redis, keys: Keys, writer: EventWriter, spool_dir: str, own: Path,
                               bound: float, stop: asyncio.Event) -> None:
    """Before the daemon claims its first room: replay the spools of gone daemons, start ``writer`` and wait
    until its own spool (left by an earlier run with the same id) is in Redis, within ``bound`` seconds for
    each step (the orphans together, then its own); a set ``stop`` (a drain) cuts the waits short.

    The order matters: spooled records carry the fencing epochs of the leases they were written under, and a
    claim gives the room a higher epoch, after which the room refuses them (``FENCED``, to ``rs:dead``).
    """
    orphans = await replay_orphans(redis, keys, spool_dir, own, bound, stop, wait=writer.wait)
    if orphans.replayed:
        log.info("%d records from spools of gone daemons are in Redis", orphans.replayed)
    if orphans.left and not stop.is_set():
        log.error("spools of gone daemons not fully replayed within %.1fs (daemon.drain_timeout): %s; they are "
                  "kept for the next start, but their records for rooms claimed meanwhile will be refused as "
                  "fenced (rs:dead)", bound, ", ".join(str(p) for p in orphans.left))
    await writer.start()
    if not writer.spooled_bytes:
        return
    log.info("own spool holds %d bytes; replaying it before claiming any room (bound %.1fs)",
             writer.spooled_bytes, bound)
    if await flush_unless(writer, bound, stop):
        stats = writer.stats
        log.info("own spool replayed: %d records in Redis, %d refused as fenced (rs:dead)",
                 stats.written + stats.duplicates, stats.fenced)
    elif not stop.is_set():
        log.error("own spool NOT replayed within %.1fs (daemon.drain_timeout; %d bytes left, Redis slow or "
                  "gone?); claiming rooms anyway: spooled records of rooms claimed now will be refused as fenced "
                  "(rs:dead)", bound, writer.spooled_bytes)


async def flush_unless(writer: EventWriter, timeout: float, stop: asyncio.Event | None) -> bool:
    """``writer.flush(timeout)``, cut short (False) when ``stop`` is set."""
    flush = asyncio.ensure_future(writer.flush(timeout))
    if stop is None:
        return await flush
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({flush, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (flush, stopped):
            task.cancel()
        await asyncio.gather(flush, stopped, return_exceptions=True)
    return flush.done() and not flush.cancelled() and flush.result()


@dataclass
class OrphanReplay:
    replayed: int = 0  # records now in Redis
    left: list[Path] = field(default_factory=list)  # spools not (fully) replayed; kept for the next start


async def replay_orphans(redis: aioredis.Redis, keys: Keys, spool_dir: str, own: Path, timeout: float,
                         stop: asyncio.Event | None = None, wait: tuple[int, float] = (0, 1.0)) -> OrphanReplay:
    """Replay every spool in ``spool_dir`` whose daemon is gone, within ``timeout`` seconds in all (``wait``: the
    writer's ``wait_replicas`` and ``wait_timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    result = OrphanReplay()
    for path in await asyncio.to_thread(lambda: sorted(Path(spool_dir).glob("*.spool"))):
        if path == own:
            continue
        lock = SpoolLock(path.parent, path.stem)
        try:
            if not lock.try_acquire():
                continue  # its daemon is alive
        except OSError as exc:
            log.warning("spool %s: cannot lock (%s); left alone", path, exc)
            continue
        try:
            left = deadline - loop.time()
            if left <= 0 or (stop is not None and stop.is_set()):
                result.left.append(path)
                continue
            count, done = await _replay_one(redis, keys, path, left, stop, wait)
            result.replayed += count
            if not done:
                result.left.append(path)
        finally:
            lock.release(remove=not path.exists())
    return result


async def _replay_one(redis: aioredis.Redis, keys: Keys, path: Path, timeout: float,
                      stop: asyncio.Event | None, wait: tuple[int, float]) -> tuple[int, bool]:
    """(records now in Redis, whether the whole spool is)."""
    spool = await Spool.open(path)  # opening reads the file: off the event loop
    if spool.empty:
        await spool.aclose()
        await asyncio.to_thread(_remove_spool, path)
        return 0, True
    log.info("spool %s of a daemon that is gone holds %d bytes; replaying", path, spool.pending_bytes)
    writer = EventWriter(redis, keys=keys, producer=decode_name(path.stem), spool=spool, wait_replicas=wait[0],
                         wait_timeout=wait[1])
    await writer.start()
    done = await flush_unless(writer, timeout, stop)
    await writer.aclose(timeout=1.0)
    count = writer.stats.written + writer.stats.duplicates
    if done and spool.empty:
        await asyncio.to_thread(_remove_spool, path)
        log.info("spool %s replayed (%d records) and removed", path, count)
        return count, True
    log.warning("spool %s not fully replayed (Redis unreachable or slow?); kept for the next start", path)
    return count, False
