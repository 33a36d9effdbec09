"""CLI commands that read the event log and run projections: ``events``, ``consume``, and how records and
states look to a person on a terminal and as JSON lines for tools (``state`` is :mod:`.state`)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import importlib
import signal
import sys
from typing import Any

import msgspec

from eventstore.connection import connect
from eventstore.consumer import ProjectionRunner
from eventstore.keys import Keys
from eventstore.projections import PROJECTIONS, Projection
from eventstore.reader import CaughtUp, RoomReader
from eventstore.records import Record, tag_of

from ..control import check_room_name
from ..errors import REDIS_ERRORS, CommandError
from ..settings import Settings, archive_of
from .output import emit
from .roomlog import room_facts
from .rooms import redis_failed

# --- how records and states look: lines for a person on a terminal, JSON lines for tools ---------------------
_ENVELOPE = {"seq", "v", "room", "session", "ts", "producer", "epoch", "type"}
_json = msgspec.json.Encoder()


def _payload_text(data: bytes, limit: int = 60) -> str:
    try:
        text = data.decode("utf-8")
        if text.isprintable():
            return repr(text if len(text) <= limit else text[:limit] + "…")
    except UnicodeDecodeError:
        pass
    return f"<{len(data)} bytes {data[:16].hex()}{'…' if len(data) > 16 else ''}>"


LONG_TEXT = 200  # characters of a long text field (a text stream) shown on an events line


def record_line(record: Record) -> str:
    """One line per record: ``seq  time  type  key=value ...`` (empty fields left out)."""
    when = _dt.datetime.fromtimestamp(record.ts, tz=_dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
    fields: list[str] = []
    for name in record.__struct_fields__:
        if name in _ENVELOPE:
            continue
        value = getattr(record, name)
        if value in ("", None, [], b"") or (name == "reliable" and value is True):
            continue
        if isinstance(value, bytes):  # data packets, byte streams: printable text or a short hex view
            fields.append(f"{name}={_payload_text(value)}")
        elif isinstance(value, str) and len(value) > LONG_TEXT:  # a text stream: the start, and how long
            fields.append(f"{name}={value[:LONG_TEXT]!r}…({len(value)} characters)")
        else:
            fields.append(f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}")
    return f"{record.seq:>6}  {when}  {tag_of(record):<26} {' '.join(fields)}".rstrip()


def record_json(record: Record) -> str:
    """The record as one JSON line; data payloads as text when they are UTF-8, else base64 (``data_b64``)."""
    data: dict[str, Any] = msgspec.to_builtins(record)
    payload = getattr(record, "data", None)
    if isinstance(payload, bytes):  # data packets, byte streams
        try:
            data["data"] = payload.decode("utf-8")
        except UnicodeDecodeError:
            data.pop("data")
            data["data_b64"] = msgspec.to_builtins(payload)
    return _json.encode(data).decode()


def state_json(state: Any) -> str:
    return msgspec.json.format(_json.encode(state), indent=2).decode()


def load_projection(name: str) -> Projection[Any]:
    """A built-in projection by name, or ``module:attribute`` of the user's own."""
    if name in PROJECTIONS:
        return PROJECTIONS[name]
    if ":" not in name:
        raise CommandError(f"unknown projection {name!r}: use {', '.join(PROJECTIONS)} or module:attribute", 2)
    module_name, _, attr = name.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise CommandError(f"cannot load projection {name!r}: {exc}", 2) from None
    if isinstance(obj, type):
        obj = obj()
    if not isinstance(obj, Projection):
        raise CommandError(f"{name!r} is not a projection (needs name, state_type, initial, apply)", 2)
    return obj


async def cmd_events(args: argparse.Namespace, settings: Settings) -> int:
    room = check_room_name(args.room)
    if args.since < 0:
        raise CommandError(f"--since must be a sequence number (0 or more), got {args.since}", 2)
    redis = connect(settings.redis.url)
    keys = Keys(settings.redis.prefix)
    reader = RoomReader(redis, keys, archive=archive_of(settings))  # archived records first
    show = record_json if args.json else record_line
    try:
        (await room_facts(redis, keys, room)).require_known()
        if args.follow:
            async for item in reader.follow(room, args.since):
                if not isinstance(item, CaughtUp):
                    emit(show(item), flush=True)
        else:
            async for record in reader.iter_room(room, args.since):
                emit(show(record))
    except REDIS_ERRORS as exc:
        raise redis_failed(settings, exc) from None
    finally:
        await redis.aclose()
    return 0


async def cmd_consume(args: argparse.Namespace, settings: Settings) -> int:
    projection = load_projection(args.projection)
    redis = connect(settings.redis.url)
    runner = ProjectionRunner(
        redis, projection, keys=Keys(settings.redis.prefix), instance=args.instance,
        chunk=settings.consumer.chunk, lease_ms=settings.consumer.lease_ms, block_ms=settings.consumer.block_ms,
        archive=archive_of(settings),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)
    try:
        applied = await runner.run(until_caught_up=args.until_caught_up)
    except REDIS_ERRORS as exc:
        raise redis_failed(settings, exc) from None
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await redis.aclose()
    print(f"{projection.name}: applied {applied} records", file=sys.stderr)
    return 0
