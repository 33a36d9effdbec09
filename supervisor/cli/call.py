"""``room-supervisor call``: a test caller for a developer's loop. It joins a LiveKit room as a participant,
sends a text (a LiveKit text stream and, with ``--data``, a data packet), leaves, and says what it did.

This is the one command besides ``serve`` that talks to LiveKit; LiveKit's ``rtc`` (a native library) is loaded
here only, after the arguments were checked, so every other command stays light. The token is made like the
daemon's (``transport.tokens``) from the settings' ``livekit.url``, ``api_key`` and ``api_secret``, for this
room only, with no right to publish media.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import logging
import re
import secrets
import time
import warnings
from dataclasses import dataclass
from typing import Any

from transport.tokens import BOT_PREFIX

from ..control import check_room_name
from ..errors import CommandError
from ..settings import Settings
from .output import emit

CALLER_PREFIX = "rs-caller-"
MAX_TEXT_BYTES = 64 * 1024  # a text stream is sent in chunks; this keeps a test caller's text sensible
MAX_DATA_BYTES = 15_000  # a reliable data packet holds about 15 KiB (docs/livekit-facts.md)
MAX_NAME_CHARS = 128  # identity and topic
MAX_WAIT = 600.0
CONNECT_TIMEOUT = 15.0
LINGER = 0.3  # after the sends returned: the server forwards them before it sees the caller leave
TOKEN_TTL = _dt.timedelta(minutes=10)
_JWT = re.compile(r"eyJ[\w-]*\.[\w-]*\.[\w-]*")  # LiveKit echoes a refused token in its error message
_rtc_started = False


def rtc_started() -> bool:
    """Whether this process started LiveKit's native library: then it must end with ``os._exit`` (see
    :func:`supervisor.cli.main.main`), since the library's exit-time dispose can abort a finished process with a
    Rust panic ("panic in a function that cannot unwind", exit 134), as it did the daemon."""
    return _rtc_started


@dataclass(frozen=True, slots=True)
class Plan:
    room: str
    text: str
    size: int  # bytes of UTF-8
    topic: str
    identity: str
    data: bool
    wait: float


def _name(value: str, what: str) -> str:
    if not value or not value.strip() or len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise CommandError(f"{what} must be printable text of 1 to {MAX_NAME_CHARS} characters, got {value!r}", 2)
    return value


def plan(args: argparse.Namespace) -> Plan:
    """The call asked for, or a usage error (exit 2) saying what is wrong with it."""
    room = check_room_name(args.room)
    text = args.say
    if not text or not text.strip():
        raise CommandError("--say needs something to say: the text is empty", 2)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise CommandError("--say: the text is not valid UTF-8", 2) from None
    if size > MAX_TEXT_BYTES:
        raise CommandError(f"--say: the text is {size} bytes; at most {MAX_TEXT_BYTES} are sent", 2)
    if args.data and size > MAX_DATA_BYTES:
        raise CommandError(f"--say with --data: the text is {size} bytes, and one data packet holds at most "
                           f"{MAX_DATA_BYTES}; send a shorter text, or drop --data (a text stream takes up to "
                           f"{MAX_TEXT_BYTES})", 2)
    topic = _name(args.topic, "--topic")
    identity = CALLER_PREFIX + secrets.token_hex(3) if args.identity is None else _name(args.identity, "--identity")
    if identity.startswith(BOT_PREFIX):
        raise CommandError(f"--identity {identity!r} starts with {BOT_PREFIX!r}, which marks the daemon's own bots: "
                           "the daemon would remove it from the room; choose another", 2)
    if not 0 <= args.wait <= MAX_WAIT:
        raise CommandError(f"--wait must be 0 to {MAX_WAIT:.0f} seconds, got {args.wait}", 2)
    return Plan(room, text, size, topic, identity, args.data, args.wait)


def signal_url(url: str) -> str:
    """The settings allow http(s):// for LiveKit (its API); rtc signals over ws(s)://."""
    for http, ws in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(http):
            return ws + url[len(http):]
    return url


def _token(p: Plan, settings: Settings) -> str:
    from livekit import api

    warnings.filterwarnings("ignore", message="The HMAC key is .* bytes long")  # LiveKit's dev secret is short
    grants = api.VideoGrants(room_join=True, room=p.room, can_publish=False, can_subscribe=False,
                             can_publish_data=True)
    token = api.AccessToken(settings.livekit.api_key, settings.livekit.api_secret).with_identity(p.identity)
    return token.with_name("room-supervisor call").with_grants(grants).with_ttl(TOKEN_TTL).to_jwt()


def connect_failed(url: str, room: str, message: str) -> CommandError:
    """What a refused or failed connect means, for a person (exit 1); the token LiveKit echoes is left out."""
    detail = _JWT.sub("<token>", message).strip() or "no detail"
    if " 401 " in f" {detail} " or "Unauthorized" in detail:
        return CommandError(f"LiveKit at {url} refused the API key or secret ({detail}); check livekit.api_key and "
                            "livekit.api_secret (LIVEKIT_API_KEY, LIVEKIT_API_SECRET)")
    if "connection error" in detail or "os error" in detail or "IO error" in detail:
        return CommandError(f"cannot reach LiveKit at {url} ({detail}); check livekit.url (LIVEKIT_URL)")
    return CommandError(f"cannot join {room!r} on LiveKit at {url} ({detail})")


def _others(room: Any) -> list[str]:
    return sorted(p.identity for p in room.remote_participants.values())


async def _wait_for_bot(room: Any, seconds: float) -> bool:
    """Wait (on participant events, with a deadline) until a bot of ours is in the room."""
    arrived = asyncio.Event()

    def check(*_: Any) -> None:
        if any(name.startswith(BOT_PREFIX) for name in _others(room)):
            arrived.set()

    room.on("participant_connected", check)
    check()
    try:
        await asyncio.wait_for(arrived.wait(), seconds)
        return True
    except asyncio.TimeoutError:
        return False
    finally:
        room.off("participant_connected", check)


def _preview(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


async def _talk(room: Any, p: Plan, url: str) -> None:
    """In the room: say who is there, wait for a bot if asked, send, and linger a moment."""
    others = _others(room)
    emit(f"joined {p.room!r} at {url} as {p.identity} "
         f"({'in the room: ' + ', '.join(others) if others else 'nobody else is in the room'})", flush=True)
    if p.wait and not any(name.startswith(BOT_PREFIX) for name in others):
        found = await _wait_for_bot(room, p.wait)
        emit(f"a bot joined: {', '.join(_others(room))}" if found
             else f"no bot of ours joined within {p.wait:g}s; sending anyway", flush=True)
    elif not others:
        emit("  (nobody receives what is sent now: join the room with a bot first, or use --wait SECONDS)")
    info = await room.local_participant.send_text(p.text, topic=p.topic)
    emit(f"sent {_preview(p.text)} as a text stream: {p.size} bytes, topic {p.topic!r}, stream {info.stream_id}")
    if p.data:
        await room.local_participant.publish_data(p.text.encode("utf-8"), reliable=True, topic=p.topic)
        emit(f"sent {_preview(p.text)} as a data packet: {p.size} bytes, topic {p.topic!r}, reliable")
    await asyncio.sleep(LINGER)


async def cmd_call(args: argparse.Namespace, settings: Settings) -> int:
    p = plan(args)  # bad input is refused before LiveKit's native library is even loaded
    from livekit import rtc
    from livekit.rtc.participant import PublishDataError

    if not args.verbose:  # a failed connect is said once, below, not also by rtc's own log lines
        logging.getLogger("livekit").setLevel(logging.CRITICAL)
    global _rtc_started
    _rtc_started = True
    url = signal_url(settings.livekit.url)
    room = rtc.Room()
    started = time.monotonic()
    try:
        await asyncio.wait_for(room.connect(url, _token(p, settings), rtc.RoomOptions(auto_subscribe=False)),
                               CONNECT_TIMEOUT)
    except rtc.ConnectError as exc:
        raise connect_failed(url, p.room, exc.message) from None
    except asyncio.TimeoutError:
        raise CommandError(f"LiveKit at {url} did not let {p.identity} into {p.room!r} within "
                           f"{CONNECT_TIMEOUT:.0f}s; check livekit.url (LIVEKIT_URL)") from None
    try:
        await _talk(room, p, url)
    except (rtc.StreamError, PublishDataError) as exc:
        raise CommandError(f"LiveKit at {url} did not take what {p.identity} sent to {p.room!r}: {exc}") from None
    finally:
        await room.disconnect()
    emit(f"left {p.room!r} after {time.monotonic() - started:.1f}s")
    return 0
