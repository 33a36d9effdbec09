"""The daemon's spool file and its lock; spools left behind by daemons that died are replayed.

Each daemon writes to ``<spool_dir>/<daemon id>.spool`` and holds an exclusive ``flock`` on
``<daemon id>.lock`` while it runs, so two daemons with the same id on one host refuse to share a spool. A
spool whose lock nobody holds belongs to a daemon that is gone (a ``kill -9``, a crash, or an earlier run
with another id): at start the daemon replays it to Redis, before claiming any room, so its records still
carry the epochs they were written with, and deletes it once everything is in Redis.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

import redis.asyncio as aioredis

from eventstore.keys import Keys, decode_name, encode_name
from eventstore.spool import Spool
from eventstore.writer import EventWriter

from .errors import SupervisorError

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


async def replay_orphans(redis: aioredis.Redis, keys: Keys, spool_dir: str, own: Path,
                         timeout: float = 10.0) -> int:
    """Replay every spool in ``spool_dir`` whose daemon is gone; returns how many records went to Redis."""
    replayed = 0
    for path in sorted(Path(spool_dir).glob("*.spool")):
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
            replayed += await _replay_one(redis, keys, path, timeout)
        finally:
            lock.release(remove=not path.exists())
    return replayed


async def _replay_one(redis: aioredis.Redis, keys: Keys, path: Path, timeout: float) -> int:
    spool = Spool(path)
    if spool.empty:
        spool.close()
        _remove_spool(path)
        return 0
    log.info("spool %s of a daemon that is gone holds %d bytes; replaying", path, spool.pending_bytes)
    writer = EventWriter(redis, keys=keys, producer=decode_name(path.stem), spool=spool)
    await writer.start()
    done = await writer.flush(timeout)
    await writer.aclose(timeout=1.0)
    count = writer.stats.written + writer.stats.duplicates
    if done and spool.empty:
        _remove_spool(path)
        log.info("spool %s replayed (%d records) and removed", path, count)
    else:
        log.warning("spool %s not fully replayed (Redis unreachable?); will retry at next start", path)
    return count
