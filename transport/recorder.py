"""EventRecorder: builds records for one session (envelope filled in) and hands them to the EventWriter.

It also runs the call-state machine over everything it records, so the transport learns of every change of
``state`` and can fire ``on_call_state_updated`` for it (and record that too). ``emit`` never waits for Redis:
``EventWriter.append`` returns at once (or, under back-pressure, within the writer's ``max_block``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from eventstore.projections.callstate import CALL_STATE
from eventstore.records import CallStateUpdated, Connected, Record, tag_of
from eventstore.writer import EventWriter

log = logging.getLogger("transport")

StateListener = Callable[[str, str, Record], None]  # (previous state, new state, cause record)


class EventRecorder:
    def __init__(self, writer: EventWriter, *, room: str, session: str, epoch: int = 0,
                 producer: str | None = None) -> None:
        self.writer = writer
        self.room = room
        self.session = session
        self.epoch = epoch
        self.producer = producer or writer.producer
        self.call_state = CALL_STATE.initial(room)
        self.count = 0
        self.connected = False  # a `connected` record was written in this session
        self._listeners: list[StateListener] = []

    def on_state_change(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def make(self, cls: type[Record], **fields: Any) -> Record:
        return cls(room=self.room, session=self.session, ts=time.time(), producer=self.producer,
                   epoch=self.epoch, **fields)

    async def emit(self, cls: type[Record], **fields: Any) -> Record:
        """Build, append, and feed the record to the call-state machine."""
        record = self.make(cls, **fields)
        await self.writer.append(record)
        self.count += 1
        self.connected = self.connected or isinstance(record, Connected)
        if not isinstance(record, CallStateUpdated):
            await self._advance_call_state(record)
        return record

    async def _advance_call_state(self, record: Record) -> None:
        before = self.call_state
        after = CALL_STATE.apply(before, record)
        self.call_state = after
        if after.state == before.state:
            return
        await self.emit(CallStateUpdated, state=after.state, previous=before.state, phase=after.phase,
                        cause=tag_of(record))
        for listener in self._listeners:
            try:
                listener(before.state, after.state, record)
            except Exception:  # a listener must never stop recording
                log.exception("room=%s session=%s: call-state listener failed", self.room, self.session)
