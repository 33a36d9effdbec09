"""CLI commands that change or show desired state: ``join``, ``leave``, ``rooms``. They talk to Redis only."""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import msgspec
from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventstore.connection import connect
from eventstore.keys import Keys
from transport.pipeline_names import PipelineNotFound, resolve_target

from ..control import Control, JoinResult, check_room_name, unusable_name
from ..errors import REDIS_ERRORS, CommandError
from ..heartbeat import Heartbeat, read_heartbeats
from ..settings import Settings, redact_url
from .output import emit
from .roomlog import at_a_glance

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
    if isinstance(exc, (OSError, TimeoutError, RedisConnectionError, RedisTimeoutError, RedisClusterException)):
        return CommandError(f"cannot reach Redis at {where} ({type(exc).__name__}: {exc})")
    return CommandError(f"Redis at {where} refused the command ({type(exc).__name__}: {exc})")


async def cmd_join(args: argparse.Namespace, settings: Settings) -> int:
    room = check_room_name(args.room)
    pipeline = check_pipeline(args.pipeline or settings.daemon.default_pipeline, settings)
    keys = Keys(settings.redis.prefix)  # load_settings refused a prefix keys cannot carry
    redis = connect(settings.redis.url)
    try:
        result = await Control(redis, keys).join(room, pipeline)
    except REDIS_ERRORS as exc:
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
    except REDIS_ERRORS as exc:
        raise redis_failed(settings, exc) from None
    finally:
        await redis.aclose()
    print(f"{room}: {'will be left' if was else 'was not desired; nothing changed'}")
    return 0


async def gather_rooms(redis: Any, keys: Keys, beats: list[Heartbeat]) -> dict[str, dict[str, Any]]:
    """room -> what is known about it: desired entry, which daemon holds it and how (from ``beats``), its last
    record, the materialized states, and what it comes to (``wanted``, ``why``)."""
    desired = await Control(redis, keys).desired()
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
    usable = [name for name in rooms if not unusable_name(name)]  # "" has no keys
    for name, facts in (await at_a_glance(redis, keys, usable)).items():
        rooms[name].update(facts)
    for info in rooms.values():
        info["wanted"], info["why"] = standing(info)
        info["came"] = came(info)
    return dict(sorted(rooms.items()))


def came(info: dict[str, Any]) -> str:
    """How the room came: ``join``, ``dispatch <dispatch id>`` (LiveKit's agent dispatch), ``webhook`` (nobody
    asked for it; only LiveKit's webhooks were recorded), ``-`` (not known any more)."""
    desired: dict[str, Any] = info.get("desired") or {}
    if desired.get("cause") == "dispatch":
        return f"dispatch {desired.get('dispatch') or '?'}"
    if desired and "error" not in desired:
        return "join"
    if str((info.get("last") or {}).get("type", "")).startswith("lk_") and not info.get("session"):
        return "webhook"
    return "-"


def standing(info: dict[str, Any]) -> tuple[str, str]:
    """(wanted, why): ``desired``; ``failed`` with the reason the daemon stored; ``ended`` with the reason of
    the session that ended the call (the daemon removes such a room from desired state; its last record is
    ``session_ended`` without rejoin); ``-`` when nobody wants the room and it did not end that way."""
    desired: dict[str, Any] = info.get("desired") or {}
    if "error" in desired:
        return "?", desired["error"]
    if desired.get("failed"):
        return "failed", desired["failed"]
    if desired:
        return "desired", ""
    last: dict[str, Any] = info.get("last") or {}
    if last.get("type") == "session_ended" and not last.get("rejoin"):
        detail = last.get("detail") or ""
        return "ended", f"{last.get('reason') or 'ended'}{': ' + detail if detail else ''}"
    return "-", ""


def one_line(text: str, limit: int = 100) -> str:
    """``text`` on one line (control characters and runs of white space as one space), at most ``limit``
    characters."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _line(name: str, info: dict[str, Any]) -> str:
    desired: dict[str, Any] = info.get("desired") or {}
    session: dict[str, Any] = info.get("session") or {}
    held = f"{session.get('state', '')}@{session.get('daemon', '')}" if session else "-"
    people = info.get("participants", {}).get("present")
    call = info.get("call-state", {})
    call_text = f"{call.get('state', '')}/{call.get('phase', '')}" if call.get("state") else "-"
    pipeline = desired.get("pipeline") or session.get("pipeline") or "-"
    people_text = ",".join(people) if people else ("0" if people == [] else "-")
    why = one_line(info.get("why") or "") or "-"
    return (f"{name!r:<32} {info.get('wanted', '-'):<8} {pipeline:<16} {info.get('came', '-'):<20} {held:<28} "
            f"{call_text:<20} {people_text:<16} {why}")


def daemon_view(beat: Heartbeat) -> dict[str, Any]:
    """What ``rooms`` shows of one live daemon: its state, rooms and load."""
    return {"id": beat.id, "host": beat.host, "pid": beat.pid, "state": beat.state, "rooms": len(beat.rooms),
            "max_rooms": beat.max_rooms, "load": beat.load, "load_threshold": beat.load_threshold, "cpu": beat.cpu,
            "loop_lag_p50": beat.loop_lag_p50, "loop_lag_p99": beat.loop_lag_p99, "declined": beat.declined}


def _daemon_line(d: dict[str, Any]) -> str:
    taking = "full" if d["rooms"] >= d["max_rooms"] or (d["load_threshold"] < 1 and d["load"] >= d["load_threshold"]) \
        else "taking rooms"
    return (f"{d['id']!r:<32} {d['state']:<9} {d['rooms']:>5}/{d['max_rooms']:<5} "
            f"{d['load']:>5.2f}/{d['load_threshold']:<5.2f} {d['cpu'] * 100:>5.0f}% {d['loop_lag_p99'] * 1000:>8.1f} "
            f"{taking}")


async def cmd_rooms(args: argparse.Namespace, settings: Settings) -> int:
    keys = Keys(settings.redis.prefix)  # load_settings refused a prefix keys cannot carry
    redis = connect(settings.redis.url)
    try:
        beats = await read_heartbeats(redis, keys)
        rooms = await gather_rooms(redis, keys, beats)
        recorded = await redis.zcard(keys.rooms())
    except REDIS_ERRORS as exc:
        raise redis_failed(settings, exc) from None
    finally:
        await redis.aclose()
    if args.json:
        emit(json.dumps({"at": time.time(), "rooms": rooms, "recorded_rooms": recorded,
                          "daemons": [daemon_view(b) for b in beats]}, ensure_ascii=False))
        return 0
    emit(f"{'ROOM':<32} {'WANTED':<8} {'PIPELINE':<16} {'CAME':<20} {'SESSION@DAEMON':<28} {'CALL STATE/PHASE':<20} "
         f"{'PEOPLE':<16} WHY")
    for name, info in rooms.items():
        emit(_line(name, info))
    if not rooms:
        emit("(no rooms)")
    if recorded > KNOWN_ROOMS_SHOWN:
        emit(f"({recorded} rooms have recorded events; the newest {KNOWN_ROOMS_SHOWN} are listed)")
    emit("")
    emit(f"{'DAEMON':<32} {'STATE':<9} {'ROOMS/MAX':<11} {'LOAD/LIMIT':<11} {'CPU':>6} {'LAG p99 ms':>10} NEW ROOMS")
    for beat in beats:
        emit(_daemon_line(daemon_view(beat)))
    if not beats:
        emit("(no daemon running)")
    return 0

