"""``room-supervisor state``: a room's materialized state, and how far it is behind the room's stream.

The state a consumer materialized is only as fresh as the consumer: with none running it is whatever the last
one left (or nothing at all). So ``state`` says, for each projection, where the materialized state stands
against the stream (up to date, N records behind, not materialized) and which command catches it up, and exits
5 when it is not materialized or is behind with no consumer running to catch it up. ``--check`` compares the
materialized state with a replay of the stream up to the same sequence number (exit 3 when they differ), and
reports the lag the same way.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

import msgspec

from eventstore.connection import connect
from eventstore.consumer import replay
from eventstore.keys import Keys
from eventstore.projections import PROJECTIONS, Projection

from ..control import check_room_name
from ..errors import REDIS_ERRORS
from ..settings import Settings, archive_of, redact_url
from .events import load_projection, state_json
from .output import emit
from .parser import EXIT_BEHIND, EXIT_DIFFERENT, EXIT_OK
from .roomlog import RoomFacts, Standing, room_facts
from .rooms import redis_failed


def again(args: argparse.Namespace, *words: str) -> str:
    """``room-supervisor WORDS`` with the settings flags this command was given, quoted for a shell (the Redis
    URL with its password masked)."""
    flags: list[str] = []
    if getattr(args, "config", None):
        flags += ["--config", args.config]
    if getattr(args, "redis_url", None):
        flags += ["--redis-url", redact_url(args.redis_url)]
    if getattr(args, "prefix", None):
        flags += ["--prefix", args.prefix]
    return "room-supervisor " + " ".join(shlex.quote(w) for w in (*words, *flags))


def standing_text(s: Standing, args: argparse.Namespace) -> str:
    """Where ``s`` stands, for a person: up to date, behind (and who catches it up), or ahead of the stream."""
    end = s.stream
    catch_up = f"`{again(args, 'consume', s.name)}` catches it up"
    if s.ahead:
        return (f"ahead of the stream, which ends at seq {end.seq}: records it folded are gone from Redis "
                "(a Redis restart without them?)")
    if s.caught_up:
        return "up to date with the stream" if end.seq else "the room has no records yet"
    behind = f"{s.behind} record(s) behind the stream (seq {end.seq})" if s.behind else "behind the stream"
    if s.consumers:
        return f"{behind}; {s.consumers} consumer(s) of {s.projection.name} running, catching up"
    return f"{behind}, and no consumer of {s.projection.name} is running: {catch_up}"


def not_materialized_text(s: Standing, args: argparse.Namespace) -> str:
    running = (f"{s.consumers} consumer(s) of {s.projection.name} running, not there yet" if s.consumers
               else f"no consumer of {s.projection.name} is running")
    return (f"not materialized: no consumer has folded this room yet (its stream is at seq {s.stream.seq}; "
            f"{running}). Catch it up: `{again(args, 'consume', s.name)}`; or rebuild it now: "
            f"`{again(args, 'state', s.room, '--replay')}`")


def _projections(args: argparse.Namespace) -> list[tuple[str, Projection[Any]]]:
    names = [args.projection] if args.projection else list(PROJECTIONS)
    return [(name, load_projection(name)) for name in names]


def _show(s: Standing, args: argparse.Namespace) -> bool:
    """Print the materialized state under a header saying where it stands; False when it is stuck."""
    if not s.materialized and not s.caught_up:
        emit(f"# {s.name}: {not_materialized_text(s, args)}")
        return False
    shown = f"materialized, seq {s.seq}" if s.materialized else "nothing materialized"
    emit(f"# {s.name} ({shown}): {standing_text(s, args)}")
    emit(state_json(s.state()))
    return not s.stuck


async def _check(redis: Any, keys: Keys, s: Standing, args: argparse.Namespace) -> tuple[bool, bool]:
    """Compare with a replay up to the same seq; print one line. Returns (same, not stuck)."""
    if not s.materialized and not s.caught_up:
        emit(f"{s.name}: {not_materialized_text(s, args)}")
        return True, False
    rebuilt = await replay(redis, s.room, s.projection, keys=keys, until=s.seq, archive=args.archive)
    same = msgspec.json.encode(rebuilt) == msgspec.json.encode(s.state())
    lag = "" if s.caught_up and not s.ahead else f"; {standing_text(s, args)}"
    emit(f"{s.name}: {'same' if same else 'DIFFERENT'} at seq {s.seq}{lag}")
    return same, not s.stuck


async def _run(redis: Any, keys: Keys, facts: RoomFacts, args: argparse.Namespace) -> int:
    different = stuck = False
    for s in facts.standings:
        if args.replay:
            emit(f"# {s.name} (replayed from the stream, up to seq {facts.stream.seq})")
            emit(state_json(await replay(redis, facts.room, s.projection, keys=keys, archive=args.archive)))
        elif args.check:
            same, fine = await _check(redis, keys, s, args)
            different |= not same
            stuck |= not fine
        elif args.archive is not None and not s.materialized and facts.stream.seq and not facts.stream.last_id:
            # archived: its materialized state went with it; the archive has every record
            emit(f"# {s.name} (archived; replayed from the archive, up to seq {facts.stream.seq})")
            emit(state_json(await replay(redis, facts.room, s.projection, keys=keys, archive=args.archive)))
        else:
            stuck |= not _show(s, args)
    return EXIT_DIFFERENT if different else EXIT_BEHIND if stuck else EXIT_OK


async def cmd_state(args: argparse.Namespace, settings: Settings) -> int:
    room = check_room_name(args.room)
    projections = _projections(args)
    redis = connect(settings.redis.url)
    keys = Keys(settings.redis.prefix)
    args.archive = archive_of(settings)  # archived rooms replay from the archive first
    try:
        facts = await room_facts(redis, keys, room, projections, lease_ms=settings.consumer.lease_ms)
        return await _run(redis, keys, facts.require_known(), args)
    except REDIS_ERRORS as exc:
        raise redis_failed(settings, exc) from None
    finally:
        await redis.aclose()
