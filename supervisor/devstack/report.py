"""What the demo prints at the end: the room's events, the rebuilt state, and how to look for yourself."""

from __future__ import annotations

import datetime as _dt
import shutil
import subprocess
from typing import Any, Awaitable, Callable, Protocol

import redis.asyncio as aioredis

from eventstore.consumer import materialized
from eventstore.keys import Keys
from eventstore.projections import CALL_STATE, PARTICIPANTS, PROJECTIONS


class Run(Protocol):
    """Runs ``room-supervisor ARGS`` and returns what it printed."""

    def __call__(self, *args: str, ok: tuple[int, ...] = (0,)) -> Awaitable[str]: ...


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


async def print_report(redis: aioredis.Redis, room: str, redis_port: int, run: Run,
                       say: Callable[[str], None]) -> None:
    """Each section says which command produced it, and it was that command (``run`` runs the real CLI)."""
    keys = Keys()
    say("\n=== the room's events ===")
    say(await run("events", room))
    say("\n=== the consumers, run until caught up ===")
    for projection in PROJECTIONS:
        await run("consume", projection, "--until-caught-up")
    participants, _ = await materialized(redis, room, PARTICIPANTS, keys=keys)
    calls, _ = await materialized(redis, room, CALL_STATE, keys=keys)
    say(f"\n=== participants, as `consume participants` materialized them (`room-supervisor state {room}`) ===")
    for line in participant_lines(participants):
        say(line)
    say(f"\n=== call state, as `consume call-state` materialized it (`room-supervisor state {room}`) ===")
    for line in call_state_lines(calls):
        say(line)
    say("\n=== the materialized state against a replay of the log from zero ===")
    say(await run("state", room, "--check", ok=(0, 3)))
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
