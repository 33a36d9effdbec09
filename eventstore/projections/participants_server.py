"""The server view of the ``participants`` projection: what LiveKit's webhooks (``lk_*`` records) say.

Pure and order-tolerant: LiveKit posts one room's webhooks to one URL in its own order (a retry holds up the later
ones), but with several URLs (one per daemon) each daemon records the first copy it gets, so records of one room
can land out of the server's order. Each connection (participant sid) keeps the most it has heard: a join after
its own leave fills in what the leave lacked and never reopens it. The bot's view (``present``, ``left``,
``people``, ...) is untouched: the two views are kept side by side (README, "Participants").
"""

from __future__ import annotations

from typing import Final

from msgspec.structs import replace

from ..records import (
    LkParticipantConnectionAborted, LkParticipantJoined, LkParticipantLeft, LkRoomFinished, LkRoomStarted,
    LkTrackPublished, Record, ServerParticipantRecord, ServerRecord,
)
from .participants_model import VISIT_LIMIT, ParticipantsState, ServerView, Visit

_ENDS: Final = (LkParticipantLeft, LkParticipantConnectionAborted)


def apply_server(state: ParticipantsState, record: Record) -> ParticipantsState:
    """``state`` with one server record applied (other records: unchanged)."""
    if not isinstance(record, ServerRecord):
        return state
    view = replace(state.server, events=state.server.events + 1,
                   room_sid=state.server.room_sid or record.room_sid)
    if isinstance(record, LkRoomStarted):
        view = replace(view, started_at=_earliest(view.started_at, record.server_ts))
    elif isinstance(record, LkRoomFinished):
        view = replace(view, finished_at=max(view.finished_at or 0.0, record.server_ts))
    elif isinstance(record, ServerParticipantRecord) and record.participant_sid:
        view = _visit(view, record)
    return replace(state, last_seq=record.seq, last_ts=record.ts, server=view)


def _earliest(old: float | None, new: float) -> float:
    return new if old is None else min(old, new)


def _visit(view: ServerView, r: ServerParticipantRecord) -> ServerView:
    old = view.visits.get(r.participant_sid)
    if old is None:
        if len(view.visits) >= VISIT_LIMIT:
            return replace(view, dropped=view.dropped + 1)
        old = Visit(identity=r.participant_id, sid=r.participant_sid, kind=r.kind,
                    joined_at=r.joined_at or r.server_ts)
    new = replace(old, identity=old.identity or r.participant_id, kind=old.kind or r.kind,
                  joined_at=old.joined_at or r.joined_at)
    if isinstance(r, LkParticipantJoined) and r.joined_at:
        new = replace(new, joined_at=r.joined_at)
    elif isinstance(r, _ENDS):
        aborted = new.aborted or isinstance(r, LkParticipantConnectionAborted)
        new = replace(new, left_at=r.server_ts if new.left_at is None else min(new.left_at, r.server_ts),
                      reason=new.reason or r.reason, aborted=aborted)
    elif isinstance(r, LkTrackPublished):
        new = replace(new, tracks=new.tracks + 1)
    if new == old and r.participant_sid in view.visits:
        return view
    return replace(view, visits={**view.visits, r.participant_sid: new})


def unseen_by_bot(state: ParticipantsState) -> list[Visit]:
    """Visits of people (not agents) the bot never had in its view: who came and went without the bot knowing."""
    known = set(state.people)
    return [v for v in state.server.visits.values() if v.kind != "agent" and v.identity not in known]
