"""What the demo prints: the room's events, the rebuilt state, the log in redis-cli, and, while the stack is held,
how to use it from another shell."""

from __future__ import annotations

import datetime as _dt
import shutil
import subprocess
from typing import Any, Awaitable, Callable, Protocol, Sequence

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


def exports(stack: Any) -> str:
    """The settings another shell needs to use the stack (dev keys: it is the local dev stack)."""
    return (f"export REDIS_URL={stack.redis.url} LIVEKIT_URL={stack.livekit.url} "
            f"LIVEKIT_API_KEY={stack.api_key} LIVEKIT_API_SECRET={stack.api_secret}")


def print_held(stack: Any, daemon: Any, consumed: Sequence[str], say: Callable[[str], None],
               room: str = "demo") -> None:
    """What a person can do while the stack is held: the settings to export and the commands to run."""
    base = Keys().room_base(room)
    port = stack.redis.port
    say("\n=== the stack stays up: use it from another shell (dev keys; only this machine can reach it) ===")
    say(exports(stack))
    say("  room-supervisor rooms")
    say("  room-supervisor join myroom --pipeline echo")
    say("  room-supervisor call myroom --say hi --data --wait 10")
    say("  room-supervisor events myroom --follow")
    say("  room-supervisor state myroom")
    say(f"  redis-cli -p {port} XRANGE '{base}:events' - +")
    say(f"  redis-cli -p {port} HGETALL '{base}:state:participants'")
    say(f"running: the daemon {daemon.id} (pid {daemon.pid}, log {daemon.log_path}, "
        f"metrics http://127.0.0.1:{daemon.http_port}/metrics) and a consumer of {' and '.join(consumed)}")
    say("Ctrl-C (or SIGTERM) stops everything.")
