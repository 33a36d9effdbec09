"""CLI commands that change or show desired state: ``join``, ``leave``, ``rooms``. They talk to Redis only."""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import msgspec
from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventstore.connection import connect
from eventstore.consumer import materialized
from eventstore.keys import Keys
from eventstore.projections import PROJECTIONS
from transport.pipeline_names import PipelineNotFound, resolve_target

from ..control import Control, JoinResult, check_room_name, unusable_name
from ..errors import CommandError
from ..heartbeat import Heartbeat, read_heartbeats
from ..settings import Settings, redact_url

log = logging.getLogger("supervisor")

KNOWN_ROOMS_SHOWN = 1000  # rooms with recorded events that ``rooms`` shows: the newest (first recorded last)


def check_pipeline(name: str, settings: Settings) -> str:
    """``name`` if the daemons can run a pipeline of that name: built in, in ``[pipelines]`` of ``settings``, or
    an entry point in ``room_supervisor.pipelines`` (read from package metadata: nothing is imported here, and
    pipecat is not loaded). A ``module:function`` or an unknown name is a usage error saying how to register
    one. The daemons resolve the name again with their own settings."""
    try:
        resolve_target(name, settings.pipelines)
    except PipelineNotFound as exc:
        raise CommandError(str(exc), 2) from None
    return name


def redis_failed(settings: Settings, exc: BaseException) -> CommandError:
    """The CommandError for a Redis error (redis-py's or the OS's); the URL is shown redacted."""
    where = redact_url(settings.redis.url)
    if isinstance(exc, (AuthenticationError, AuthorizationError, NoPermissionError)):
        return CommandError(f"Redis at {where} refused access ({type(exc).__name__}: {exc}); check the password "
                            "in redis.url / REDIS_URL")
    if isinstance(exc, (OSError, TimeoutError, RedisConnectionError, RedisTimeoutError)):
        return CommandError(f"cannot reach Redis at {where} ({type(exc).__name__}: {exc})")
    return CommandError(f"Redis at {where} refused the command ({type(exc).__name__}: {exc})")


async def cmd_join(args: argparse.Namespace, settings: Settings) -> int:
    room = check_room_name(args.room)
    pipeline = check_pipeline(args.pipeline or settings.daemon.default_pipeline, settings)
    keys = Keys(settings.redis.prefix)  # load_settings refused a prefix keys cannot carry
    redis = connect(settings.redis.url)
    try:
        result = await Control(redis, keys).join(room, pipeline)
    except (RedisError, OSError) as exc:
        raise redis_failed(settings, exc) from None
    finally:
        await redis.aclose()
    said = {
        JoinResult.ADDED: "will be joined", JoinResult.UNCHANGED: "was already desired; nothing changed",
        JoinResult.UPDATED: "pipeline changed; its session restarts", JoinResult.RESET: "was failed; tried again",
    }[result]
    print(f"{room}: {said} (pipeline {pipeline})")
    return 0


async def cmd_leave(args: argparse.Namespace, settings: Settings) -> int:
    room = check_room_name(args.room)
    keys = Keys(settings.redis.prefix)  # load_settings refused a prefix keys cannot carry
    redis = connect(settings.redis.url)
    try:
        was = await Control(redis, keys).leave(room)
    except (RedisError, OSError) as exc:
        raise redis_failed(settings, exc) from None
    finally:
        await redis.aclose()
    print(f"{room}: {'will be left' if was else 'was not desired; nothing changed'}")
    return 0


async def _room_states(redis: Any, keys: Keys, room: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, projection in PROJECTIONS.items():  # their state exists when consumers run
        try:
            state, seq = await materialized(redis, room, projection, keys=keys)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            out[name] = {"error": f"unreadable state: {exc}"}
            continue
        if seq:
            out[name] = _summary(name, msgspec.to_builtins(state), seq)
    return out


def _summary(name: str, state: dict[str, Any], seq: int) -> dict[str, Any]:
    if name == "participants":
        present = state.get("present") or {}
        return {"seq": seq, "present": sorted(present) if isinstance(present, dict) else present}
    return {"seq": seq, "state": state.get("state", ""), "phase": state.get("phase", "")}


async def gather_rooms(redis: Any, keys: Keys) -> dict[str, dict[str, Any]]:
    """room -> what is known about it: desired entry, which daemon holds it and how, materialized states."""
    desired = await Control(redis, keys).desired()
    beats: list[Heartbeat] = await read_heartbeats(redis, keys)
    known = await redis.zrange(keys.rooms(), 0, KNOWN_ROOMS_SHOWN - 1, desc=True)
    rooms: dict[str, dict[str, Any]] = {}
    for raw in known:
        rooms.setdefault(raw.decode("utf-8", "replace"), {})
    for name, entry in desired.rooms.items():
        rooms.setdefault(name, {})["desired"] = msgspec.to_builtins(entry)
    for name in desired.unreadable:  # the name as text people can print (invalid UTF-8 as \xNN)
        shown_name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        rooms.setdefault(shown_name, {})["desired"] = {"error": "unreadable desired-state entry"}
    for beat in beats:
        for name, view in beat.rooms.items():
            rooms.setdefault(name, {})["session"] = {"daemon": beat.id, **view}
    for name, info in rooms.items():
        if not unusable_name(name):  # "" has no keys
            info.update(await _room_states(redis, keys, name))
    return dict(sorted(rooms.items()))


def _line(name: str, info: dict[str, Any]) -> str:
    desired: dict[str, Any] = info.get("desired") or {}
    session: dict[str, Any] = info.get("session") or {}
    want = "failed" if desired.get("failed") else ("desired" if desired else "-")
    held = f"{session.get('state', '')}@{session.get('daemon', '')}" if session else "-"
    people = info.get("participants", {}).get("present")
    call = info.get("call-state", {})
    call_text = f"{call.get('state', '')}/{call.get('phase', '')}" if call.get("state") else "-"
    pipeline = desired.get("pipeline") or session.get("pipeline") or "-"
    people_text = ",".join(people) if people else ("0" if people == [] else "-")
    return f"{name!r:<32} {want:<8} {pipeline:<16} {held:<28} {call_text:<20} {people_text}"


async def cmd_rooms(args: argparse.Namespace, settings: Settings) -> int:
    keys = Keys(settings.redis.prefix)  # load_settings refused a prefix keys cannot carry
    redis = connect(settings.redis.url)
    try:
        rooms = await gather_rooms(redis, keys)
        recorded = await redis.zcard(keys.rooms())
    except (RedisError, OSError) as exc:
        raise redis_failed(settings, exc) from None
    finally:
        await redis.aclose()
    if args.json:
        print(json.dumps({"at": time.time(), "rooms": rooms, "recorded_rooms": recorded}, ensure_ascii=False))
        return 0
    print(f"{'ROOM':<32} {'WANTED':<8} {'PIPELINE':<16} {'SESSION@DAEMON':<28} {'CALL STATE/PHASE':<20} PEOPLE")
    for name, info in rooms.items():
        print(_line(name, info))
    if not rooms:
        print("(no rooms)")
    if recorded > KNOWN_ROOMS_SHOWN:
        print(f"({recorded} rooms have recorded events; the newest {KNOWN_ROOMS_SHOWN} are listed)")
    return 0

