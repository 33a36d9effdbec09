"""The daemon's registry of room sessions: which rooms it holds, readable by many tasks, changed by few.

The reconcile loop adds and looks up sessions, sessions remove themselves when they end, and the heartbeat,
``/metrics`` and drain read snapshots. An ``aiorwlock.RWLock`` keeps readers from seeing a half-made change
and lets them read together; every critical section is short and never awaits I/O.
"""

from __future__ import annotations

from collections import Counter
from typing import Generic, Iterable, Protocol, TypeVar

import aiorwlock


class Registered(Protocol):
    room: str

    @property
    def state(self) -> str: ...

    def view(self) -> dict[str, object]: ...


S = TypeVar("S", bound=Registered)


class SessionRegistry(Generic[S]):
    def __init__(self) -> None:
        self._lock = aiorwlock.RWLock()
        self._sessions: dict[str, S] = {}

    async def add(self, session: S) -> bool:
        """Register ``session``; False (and nothing changes) if its room already has one."""
        async with self._lock.writer:
            if session.room in self._sessions:
                return False
            self._sessions[session.room] = session
            return True

    async def remove(self, session: S) -> None:
        """Forget ``session`` if it is still the one registered for its room."""
        async with self._lock.writer:
            if self._sessions.get(session.room) is session:
                del self._sessions[session.room]

    async def get(self, room: str) -> S | None:
        async with self._lock.reader:
            return self._sessions.get(room)

    async def sessions(self) -> dict[str, S]:
        """A copy of room -> session."""
        async with self._lock.reader:
            return dict(self._sessions)

    async def views(self) -> dict[str, dict[str, object]]:
        """room -> the session's own description (state, session id, identity, epoch, ...)."""
        async with self._lock.reader:
            return {room: s.view() for room, s in self._sessions.items()}

    async def count_by_state(self, states: Iterable[str] = ()) -> dict[str, int]:
        async with self._lock.reader:
            counts = Counter(s.state for s in self._sessions.values())
        return {**{state: 0 for state in states}, **counts}

    async def count(self) -> int:
        async with self._lock.reader:
            return len(self._sessions)
