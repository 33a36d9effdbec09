"""The ``room-supervisor`` command line. The only place that exits the process."""

from __future__ import annotations

import argparse
import contextlib
import os
import asyncio
import logging
import sys
from typing import Any, Callable, Coroutine, NoReturn, Sequence

from .errors import CommandError
from .settings import Settings, SettingsError, load_settings

log = logging.getLogger("supervisor")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_DIFFERENT = 0, 1, 2, 3


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML settings file (default: $ROOM_SUPERVISOR_CONFIG)")
    p.add_argument("--redis-url", metavar="URL", help="overrides REDIS_URL and the file")
    p.add_argument("--prefix", metavar="PREFIX", help="key prefix (default rs)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="room-supervisor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the daemon that supervises rooms")
    _common(p)
    p.add_argument("--burst", action="store_true", help="exit once no desired room is left (tests, batch jobs)")

    p = sub.add_parser("join", help="ask the daemons to join ROOM (idempotent)")
    _common(p)
    p.add_argument("room")
    p.add_argument("--pipeline", default=None, help="built-in (echo, listen) or module:function")

    p = sub.add_parser("leave", help="ask the daemons to leave ROOM (idempotent)")
    _common(p)
    p.add_argument("room")

    p = sub.add_parser("rooms", help="list desired and known rooms with session, participants and call state")
    _common(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("events", help="print a room's events")
    _common(p)
    p.add_argument("room")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--since", type=int, default=0, metavar="SEQ", help="only events after SEQ")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = sub.add_parser("consume", help="run a consumer that materializes a projection")
    _common(p)
    p.add_argument("projection", help="participants, call-state, or module:attribute of your own")
    p.add_argument("--until-caught-up", action="store_true", help="exit when nothing is left to read")
    p.add_argument("--instance", help="consumer instance name (default: random)")

    p = sub.add_parser("state", help="print a room's materialized state")
    _common(p)
    p.add_argument("room")
    p.add_argument("--projection", default=None, help="participants or call-state (default: both)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--replay", action="store_true", help="rebuild from the stream instead")
    group.add_argument("--check", action="store_true", help="compare materialized with replay; exit 3 if different")

    p = sub.add_parser("demo", help="run everything on an embedded local stack with a simulated caller")
    p.add_argument("--workdir", metavar="DIR", help="where servers keep their files (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work dir afterwards")
    p.add_argument("--no-hold", action="store_true",
                   help="stop at once after the report (default when not on a terminal)")
    p.add_argument("-v", "--verbose", action="store_true")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, dict[str, Any]] = {}
    if getattr(args, "redis_url", None):
        overrides.setdefault("redis", {})["url"] = args.redis_url
    if getattr(args, "prefix", None):
        overrides.setdefault("redis", {})["prefix"] = args.prefix
    return load_settings(getattr(args, "config", None), overrides=overrides)


def _handler(command: str) -> Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]:
    if command in ("events", "state", "consume"):
        from . import cli_log

        return getattr(cli_log, f"cmd_{command}")
    if command in ("join", "leave", "rooms"):
        from . import cli_control

        return getattr(cli_control, f"cmd_{command}")
    if command == "serve":
        from .daemon import cmd_serve

        return cmd_serve
    raise CommandError(f"unknown command {command}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args)
        settings = settings_from(args)
        handler = _handler(args.command)
        return run_on_uvloop(handler(args, settings))
    except SettingsError as exc:
        print(f"room-supervisor: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"room-supervisor: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def run_on_uvloop(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` on a fresh uvloop loop (a loop factory, not a global policy: tests keep their loop)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def exit_now(code: int) -> NoReturn:
    """End the process at once after a forced drain (the daemon is closed: its spool written and unlocked).

    Returning from the event loop would make asyncio cancel, then wait without bound for, every task still
    running (a session's pipeline still leaving LiveKit, pipecat's own tasks) and the default executor's
    threads."""
    log.warning("forced exit (code %d); sessions still leaving LiveKit are cut off", code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def entrypoint() -> None:  # pragma: no cover - console script shim
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
