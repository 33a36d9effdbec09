"""Rooms that come back from the archive: before the daemon writes to a room again (a session starts, a webhook
arrives), a room archived so long ago that its tombstone has expired gets its last seq back from the archive
(:class:`eventstore.retention.SequenceRestorer`), so that it continues at seq + 1.

Without ``[retention] archive_dir`` nothing is looked up (the tombstones are all there is). Trouble here never
stops a call: Redis not answering or an unreadable archive is logged and the room written as it is (a room that
then starts again at seq 1 is found and refused by the archiver, never merged: ``SeqReused``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import redis.asyncio as aioredis

from eventstore.archive import ArchiveError
from eventstore.keys import Keys
from eventstore.retention import SequenceRestorer

from ..control import shown
from ..errors import REDIS_TROUBLE
from ..settings import Settings, archive_of

log = logging.getLogger("supervisor")

RESTORE_WAIT = 2.0  # s at most before a session starts anyway


class ArchivedSeqs:
    def __init__(self, redis: aioredis.Redis, keys: Keys, settings: Callable[[], Settings], producer: str) -> None:
        self._redis = redis
        self._keys = keys
        self._settings = settings
        self._producer = producer
        self._restorer: SequenceRestorer | None = None
        self._made_for: tuple[str, float] = ("", 0.0)

    async def restore(self, room: str) -> int:
        """The archived last seq put back for ``room`` (0: none needed, no archive, or trouble, logged)."""
        restorer = self._current()
        if restorer is None:
            return 0
        try:
            return await asyncio.wait_for(restorer.restore(room), RESTORE_WAIT)
        except (ArchiveError, *REDIS_TROUBLE) as exc:
            log.warning("daemon %s: room=%s: cannot check the archive for the room's last seq (%r); written as it "
                        "is", self._producer, shown(room), exc)
            return 0

    def _current(self) -> SequenceRestorer | None:
        r = self._settings().retention
        if not r.archive_dir:
            return None
        if self._restorer is None or self._made_for != (r.archive_dir, r.tombstone_ttl):
            self._restorer = SequenceRestorer(self._redis, archive_of(self._settings()), keys=self._keys,
                                              tombstone_ttl=r.tombstone_ttl)
            self._made_for = (r.archive_dir, r.tombstone_ttl)
        return self._restorer
