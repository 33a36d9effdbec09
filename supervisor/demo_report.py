"""What the demo prints at the end: the room's events, the rebuilt state, and how to look for yourself."""

from __future__ import annotations

import datetime as _dt
import shutil
import subprocess
from typing import Any, Callable

import redis.asyncio as aioredis

from eventstore.consumer import ProjectionRunner, replay
from eventstore.keys import Keys
from eventstore.projections.callstate import CALL_STATE
from eventstore.projections.participants import PARTICIPANTS
from eventstore.reader import RoomReader

from .render import record_line


def _clock(ts: float | None) -> str:
    if not ts:
        return "-"
    return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc).strftime("%H:%M:%S")


def redis_cli_excerpt(port: int, key: str) -> str:
    if shutil.which("redis-cli") is None:
        return "  (redis-cli is not installed: apt-get install redis-tools)"
    out = subprocess.run(["redis-cli", "-p", str(port), "XRANGE", key, "-", "+", "COUNT", "2"],
                         capture_output=True, text=True, timeout=10)
    return out.stdout.rstrip() or out.stderr.rstrip()


def participant_lines(state: Any) -> list[str]:
    lines = []
    for identity, p in sorted(state.present.items()):
        lines.append(f"  present  {identity:<24} since {_clock(p.joined_at)}")
    for identity, d in sorted(state.left.items()):
        stats = state.people.get(identity)
        extra = f", {stats.rejoins} rejoin(s), {stats.messages} message(s), {stats.seconds:.1f}s present" if stats else ""
        lines.append(f"  left     {identity:<24} at {_clock(d.left_at)} ({d.reason}){extra}")
    c = state.counters
    lines.append(f"  room: {c.joins} join(s), {c.rejoins} rejoin(s), {c.leaves} leave(s), "
                 f"{c.data_messages} data message(s) ({c.data_bytes} bytes), {c.sessions} bot session(s)")
    return lines


def call_state_lines(state: Any) -> list[str]:
    lines = [f"  now: state={state.state} phase={state.phase}"]
    for t in state.history:
        moved = []
        if t.from_state != t.to_state:
            moved.append(f"state {t.from_state} -> {t.to_state}")
        if t.from_phase != t.to_phase:
            moved.append(f"phase {t.from_phase} -> {t.to_phase}")
        cause = t.cause
        lines.append(f"  seq {cause.seq:>3} {cause.event:<26} {', '.join(moved)}"
                     + (f" ({cause.reason})" if cause.reason else ""))
    return lines


async def print_report(redis: aioredis.Redis, room: str, redis_port: int, say: Callable[[str], None]) -> None:
    keys = Keys()
    say(f"\n=== events of room {room!r} (room-supervisor events {room}) ===")
    for record in await RoomReader(redis, keys).read(room):
        say(record_line(record))
    for projection in (PARTICIPANTS, CALL_STATE):
        await ProjectionRunner(redis, projection, keys=keys, block_ms=100).run(until_caught_up=True)
    participants = await replay(redis, room, PARTICIPANTS, keys=keys)
    calls = await replay(redis, room, CALL_STATE, keys=keys)
    say("\n=== participants, rebuilt by `room-supervisor consume participants` ===")
    for line in participant_lines(participants):
        say(line)
    say("\n=== call state, rebuilt by `room-supervisor consume call-state` ===")
    for line in call_state_lines(calls):
        say(line)
    base = keys.room_base(room)
    say("\n=== the same log in redis-cli (first two entries) ===")
    say(f"$ redis-cli -p {redis_port} XRANGE '{base}:events' - + COUNT 2")
    say(redis_cli_excerpt(redis_port, f"{base}:events"))
    say("\n=== look for yourself ===")
    say(f"  redis-cli -p {redis_port} XRANGE '{base}:events' - +")
    say(f"  redis-cli -p {redis_port} HGETALL '{base}:state:participants'")
    say(f"  redis-cli -p {redis_port} HGET '{base}:state:call-state' state")
    say(f"  room-supervisor events {room} --redis-url redis://127.0.0.1:{redis_port}/0")
    say(f"  room-supervisor state {room} --check --redis-url redis://127.0.0.1:{redis_port}/0")
