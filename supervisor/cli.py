"""The ``room-supervisor`` command line. The only place that exits the process.

Everything it prints on an error path (usage errors, configuration errors, command errors, unexpected
exceptions, and every log line, the daemon's included) goes through :func:`supervisor.settings.redact`:
URLs lose their userinfo and ``password=``-style parameters, and the configured Redis password is masked
wherever it appears.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import asyncio
import logging
import sys
import traceback
from typing import Any, Callable, Coroutine, Iterable, NoReturn, Sequence

from .errors import CommandError
from .settings import Settings, SettingsError, load_settings, redact, url_secrets

log = logging.getLogger("supervisor")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_DIFFERENT = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors redacted (a URL given in the wrong place is echoed back)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {redact(message, _secrets())}\n")


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), _secrets())


# Secrets to mask in everything printed: the Redis URLs this process was given, wherever they came from.
_SECRET_SOURCES: list[str] = []


def _secrets() -> list[str]:
    urls = [*_SECRET_SOURCES, os.environ.get("REDIS_URL", ""), os.environ.get("RS_REDIS_URL", "")]
    return sorted({s for url in urls if url for s in url_secrets(url)}, key=len, reverse=True)


def _remember_secrets(urls: Iterable[str | None]) -> None:
    _SECRET_SOURCES.extend(u for u in urls if u and "://" in u and u not in _SECRET_SOURCES)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML settings file (default: $ROOM_SUPERVISOR_CONFIG)")
    p.add_argument("--redis-url", metavar="URL", help="overrides REDIS_URL and the file")
    p.add_argument("--prefix", metavar="PREFIX", help="key prefix (default rs)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="room-supervisor", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the daemon that supervises rooms")
    _common(p)
    p.add_argument("--burst", action="store_true", help="exit once no desired room is left (tests, batch jobs)")

    p = sub.add_parser("join", help="ask the daemons to join ROOM (idempotent)")
    _common(p)
    p.add_argument("room")
    p.add_argument("--pipeline", default=None, metavar="NAME",
                   help="a pipeline name: echo, listen, or one registered in [pipelines] of the config file or "
                        "as an entry point in room_supervisor.pipelines (default: daemon.default_pipeline)")

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


def _say(message: str) -> None:
    print(redact(f"room-supervisor: {message}", _secrets()), file=sys.stderr)


def _configure_logging(verbose: bool) -> None:
    """Log lines to stderr, redacted (like ``logging.basicConfig``: nothing changes if the root logger has
    handlers already, e.g. when a program or a test calls :func:`main`)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    _remember_secrets(sys.argv[1:] if argv is None else argv)  # before parsing: a usage error echoes arguments
    parser = build_parser()
    args = parser.parse_args(argv)
    _remember_secrets([getattr(args, "redis_url", None)])
    _configure_logging(args.verbose)
    try:
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args)
        settings = settings_from(args)
        _remember_secrets([settings.redis.url])
        handler = _handler(args.command)
        return run_on_uvloop(handler(args, settings))
    except SettingsError as exc:
        _say(f"configuration error: {exc}")
        return EXIT_USAGE
    except CommandError as exc:
        _say(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug, or an error nobody turned into a CommandError: say it, with no password in it
        _say(f"unexpected error (a bug; please report it):\n{traceback.format_exc()}")
        return EXIT_FAILURE


def run_on_uvloop(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` on a fresh uvloop loop (a loop factory, not a global policy: tests keep their loop)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def exit_now(code: int, *, forced: bool = True) -> NoReturn:
    """End the process at once once the daemon is closed (its spool written and unlocked, its bots gone or,
    when ``forced``, cut off).

    Returning from the event loop would make asyncio cancel, then wait without bound for, every task still
    running (a session's pipeline still leaving LiveKit, pipecat's own tasks) and the default executor's
    threads; and the rtc FFI's exit-time dispose has aborted a drained daemon with a Rust panic ("panic in a
    function that cannot unwind", exit 134) although every room was already closed."""
    if forced:
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
