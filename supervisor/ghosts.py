"""Bots a previous holder of a room left behind.

After a takeover the previous session's bot can still be in the room: LiveKit notices a client that vanished
(``kill -9``, a crashed host) only after about 15 s, and a daemon cut off from Redis keeps its bot until its
own lease check stops it. The new holder reads the previous bot's identity from the room's last
``session_started`` record and asks LiveKit to remove it, so the room has one bot of ours, not two.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import redis.asyncio as aioredis
from livekit import api as lkapi

from eventstore.codec import DecodeError, decode_entry
from eventstore.keys import Keys
from eventstore.records import SessionStarted

log = logging.getLogger("supervisor")

SCAN_ENTRIES = 500
REMOVE_TIMEOUT = 3.0


async def previous_bot(redis: aioredis.Redis, keys: Keys, room: str) -> SessionStarted | None:
    """The ``session_started`` record of the room's latest session with a bot (None if none among the last
    entries); its ``identity`` is the bot, its ``session`` and ``epoch`` say whose it was."""
    for _, fields in await redis.xrevrange(keys.events(room), count=SCAN_ENTRIES):
        if fields.get(b"type") != b"session_started":
            continue
        try:
            record = decode_entry(fields)
        except DecodeError:
            continue
        if isinstance(record, SessionStarted) and record.identity:
            return record
    return None


async def remove_bot(livekit: lkapi.LiveKitAPI, previous: SessionStarted, epoch: int) -> bool:
    """Ask LiveKit to remove the bot of ``previous`` (a session of an earlier holder) from its room; False if it
    was not there or LiveKit did not answer. ``epoch`` is the new holder's, for the log lines."""
    room, identity = previous.room, previous.identity
    request = lkapi.RoomParticipantIdentity(room=room, identity=identity)
    where = f"room={room} epoch={epoch}: previous bot {identity} (session {previous.session}, epoch {previous.epoch})"
    try:
        await asyncio.wait_for(livekit.room.remove_participant(request), REMOVE_TIMEOUT)
        return True
    except lkapi.TwirpError as exc:
        if exc.code != "not_found":
            log.warning("%s: LiveKit refused to remove it: %s", where, exc)
        return False
    except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
        log.warning("%s: could not remove it: %r", where, exc)
        return False
