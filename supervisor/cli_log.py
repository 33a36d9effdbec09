"""CLI commands that read the event log and projections: ``events``, ``state``, ``consume``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
from typing import Any

import msgspec
from redis.exceptions import RedisError

from eventstore.connection import connect
from eventstore.consumer import ProjectionRunner, materialized, replay
from eventstore.keys import Keys
from eventstore.projections.base import Projection
from eventstore.reader import CaughtUp, RoomReader

from .cli_control import redis_failed
from .errors import CommandError
from .render import record_json, record_line, state_json
from .rooms import check_room_name
from .settings import Settings

BUILTIN_PROJECTIONS = {
    "participants": "eventstore.projections.participants:PARTICIPANTS",
    "call-state": "eventstore.projections.callstate:CALL_STATE",
}


def load_projection(name: str) -> Projection[Any]:
    """A built-in projection by name, or ``module:attribute`` of the user's own."""
    target = BUILTIN_PROJECTIONS.get(name, name)
    if ":" not in target:
        raise CommandError(f"unknown projection {name!r}: use participants, call-state or module:attribute", 2)
    module_name, _, attr = target.partition(":")
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
    redis = connect(settings.redis.url)
    reader = RoomReader(redis, Keys(settings.redis.prefix))
    show = record_json if args.json else record_line
    try:
        if args.follow:
            async for item in reader.follow(room, args.since):
                if not isinstance(item, CaughtUp):
                    print(show(item), flush=True)
        else:
            async for record in reader.iter_room(room, args.since):
                print(show(record))
    except (RedisError, OSError) as exc:
        raise redis_failed(settings, exc) from None
    finally:
        await redis.aclose()
    return 0


async def cmd_state(args: argparse.Namespace, settings: Settings) -> int:
    room = check_room_name(args.room)
    names = [args.projection] if args.projection else list(BUILTIN_PROJECTIONS)
    redis = connect(settings.redis.url)
    keys = Keys(settings.redis.prefix)
    different = False
    try:
        for name in names:
            projection = load_projection(name)
            if args.replay:
                print(f"# {name} (replayed from the stream)")
                print(state_json(await replay(redis, room, projection, keys=keys)))
                continue
            state, seq = await materialized(redis, room, projection, keys=keys)
            if args.check:
                rebuilt = await replay(redis, room, projection, keys=keys, until=seq)
                same = msgspec.json.encode(rebuilt) == msgspec.json.encode(state)
                different |= not same
                print(f"{name}: {'same' if same else 'DIFFERENT'} at seq {seq}")
                continue
            print(f"# {name} (materialized, seq {seq})")
            print(state_json(state))
    except (RedisError, OSError) as exc:
        raise redis_failed(settings, exc) from None
    finally:
        await redis.aclose()
    return 3 if different else 0


async def cmd_consume(args: argparse.Namespace, settings: Settings) -> int:
    projection = load_projection(args.projection)
    redis = connect(settings.redis.url)
    runner = ProjectionRunner(
        redis, projection, keys=Keys(settings.redis.prefix), instance=args.instance,
        chunk=settings.consumer.chunk, lease_ms=settings.consumer.lease_ms, block_ms=settings.consumer.block_ms,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)
    try:
        applied = await runner.run(until_caught_up=args.until_caught_up)
    except (RedisError, OSError) as exc:
        raise redis_failed(settings, exc) from None
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await redis.aclose()
    print(f"{projection.name}: applied {applied} records", file=sys.stderr)
    return 0
