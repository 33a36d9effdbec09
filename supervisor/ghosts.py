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


async def previous_bot(redis: aioredis.Redis, keys: Keys, room: str) -> str:
    """The identity of the bot of the room's latest session (``""`` if none among the last entries)."""
    for _, fields in await redis.xrevrange(keys.events(room), count=SCAN_ENTRIES):
        if fields.get(b"type") != b"session_started":
            continue
        try:
            record = decode_entry(fields)
        except DecodeError:
            continue
        if isinstance(record, SessionStarted) and record.identity:
            return record.identity
    return ""


async def remove_bot(livekit: lkapi.LiveKitAPI, room: str, identity: str) -> bool:
    """Ask LiveKit to remove ``identity`` from ``room``; False if it was not there or LiveKit did not answer."""
    request = lkapi.RoomParticipantIdentity(room=room, identity=identity)
    try:
        await asyncio.wait_for(livekit.room.remove_participant(request), REMOVE_TIMEOUT)
        return True
    except lkapi.TwirpError as exc:
        if exc.code != "not_found":
            log.warning("room=%s: LiveKit refused to remove the previous bot %s: %s", room, identity, exc)
        return False
    except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
        log.warning("room=%s: could not remove the previous bot %s: %r", room, identity, exc)
        return False
