"""``room-supervisor``: parse, load settings, run one command, turn its result or error into an exit code.

The only place that ends the process. Commands live in their own modules and are imported on the branch that
needs them: ``join``/``leave``/``rooms`` (:mod:`.rooms`), ``events``/``consume`` (:mod:`.events`) and ``state``
(:mod:`.state`) talk to Redis only and never load the daemon (nor pipecat, nor LiveKit's rtc); ``call``
(:mod:`.call`) loads LiveKit's rtc and talks to LiveKit only; ``serve`` imports :mod:`supervisor.daemon`, which
never imports the CLI back; ``demo`` imports the dev stack, which exists only in a source checkout.

A reader of stdout that goes away (``room-supervisor events R | head``) ends any command quietly with exit 0:
it read what it wanted. A process in which ``call`` started LiveKit's rtc ends with ``os._exit`` (:func:`exit_now`),
like the daemon: rtc's exit-time dispose can abort a finished process.

Everything printed on an error path (usage errors, configuration errors, command errors, unexpected
exceptions, and every log line, the daemon's included) goes through :func:`.parser.redact_text`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import traceback
from typing import Any, Callable, Coroutine, NoReturn, Sequence

from ..errors import CommandError
from ..settings import Settings, SettingsError, load_settings, set_level
from .output import OutputClosed, flush, silence_stdout
from .parser import EXIT_FAILURE, EXIT_MISSING, EXIT_OK, EXIT_USAGE, build_parser, redact_text, remember_secrets

log = logging.getLogger("supervisor")

Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings: defaults < TOML file < environment < ``--redis-url`` / ``--prefix``."""
    overrides: dict[str, dict[str, Any]] = {}
    if getattr(args, "redis_url", None):
        overrides.setdefault("redis", {})["url"] = args.redis_url
    if getattr(args, "prefix", None):
        overrides.setdefault("redis", {})["prefix"] = args.prefix
    return load_settings(getattr(args, "config", None), overrides=overrides)


def _command(name: str) -> Command:
    if name in ("events", "consume"):
        from . import events

        return getattr(events, f"cmd_{name}")
    if name == "state":
        from .state import cmd_state

        return cmd_state
    if name == "call":
        from .call import cmd_call

        return cmd_call
    if name == "archive":
        from .archive import cmd_archive

        return cmd_archive
    if name in ("join", "leave", "rooms"):
        from . import rooms

        return getattr(rooms, f"cmd_{name}")
    if name == "serve":
        return cmd_serve
    raise CommandError(f"unknown command {name}")


async def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """``room-supervisor serve``: run the daemon until it is drained, then end the process."""
    from ..daemon.lifecycle import Daemon
    from ..daemon.shutdown import LEFTOVER_WAIT, leftovers_end

    set_level("DEBUG" if getattr(args, "verbose", False) else settings.daemon.log_level.upper())
    log.info("settings: %r", settings)
    daemon = Daemon(settings, reload=lambda: settings_from(args), burst=getattr(args, "burst", False))
    code = await daemon.run()
    ended = daemon.forced or await leftovers_end(LEFTOVER_WAIT)
    exit_now(code, forced=daemon.forced or not ended)


def _demo(args: argparse.Namespace) -> int:
    try:
        from ..devstack.demo import run_demo
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("supervisor.devstack"):
            raise CommandError("the demo runs from a source checkout: git clone the project, then `make demo` "
                               "(an installed room-supervisor has no dev stack)", EXIT_MISSING) from None
        raise CommandError(f"the demo needs the Python module {exc.name}: pip install -e '.[test]' in the checkout "
                           "(or `make demo`, which installs what is missing)", EXIT_MISSING) from None
    return run_demo(args)


def _say(message: str) -> None:
    print(redact_text(f"room-supervisor: {message}"), file=sys.stderr)


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
    try:
        code = _main(argv)
    except (OutputClosed, BrokenPipeError):  # `| head` read what it wanted: nothing went wrong
        silence_stdout()
        code = EXIT_OK
    call = sys.modules.get(f"{__package__}.call")
    if call is not None and call.rtc_started():  # LiveKit's rtc ran here: its exit-time dispose can abort
        exit_now(code, forced=False)
    return code


def _main(argv: Sequence[str] | None) -> int:
    remember_secrets(sys.argv[1:] if argv is None else argv)  # before parsing: a usage error echoes arguments
    args = build_parser().parse_args(argv)
    remember_secrets([getattr(args, "redis_url", None)])
    _configure_logging(args.verbose)
    try:
        if args.command == "demo":
            return _demo(args)
        settings = settings_from(args)
        remember_secrets([settings.redis.url])
        code = run_on_uvloop(_command(args.command)(args, settings))
        flush()  # what is still buffered for a pipe: a reader gone by now is found here, not at exit
        return code
    except (OutputClosed, BrokenPipeError):
        raise
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
