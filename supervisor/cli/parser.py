"""The command line's grammar and its help text, written for the people who type it.

Arguments are also where secrets come in (``--redis-url redis://:password@host``): everything the CLI prints
goes through :func:`redact_text`, which masks the Redis URLs this process was given wherever they came from.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Iterable, NoReturn

from ..settings import redact, url_secrets

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_DIFFERENT, EXIT_MISSING, EXIT_BEHIND = 0, 1, 2, 3, 4, 5

DESCRIPTION = """\
Supervise LiveKit rooms with pipecat bots, and record every transport event to Redis Streams.

`serve` runs the daemon; the other commands talk to Redis only (they work while daemons run elsewhere)."""

EPILOG = """\
examples:
  room-supervisor serve --config /etc/room-supervisor/room-supervisor.toml
  room-supervisor join support-42 --pipeline echo
  room-supervisor rooms
  room-supervisor events support-42 --follow
  room-supervisor state support-42 --check
  room-supervisor call support-42 --say hi --data
  room-supervisor leave support-42

Every command but demo reads its settings from --config FILE (or $ROOM_SUPERVISOR_CONFIG), then the
environment (LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET, REDIS_URL, RS_<SECTION>_<NAME>), then the flags;
later wins. Exit codes: 0 ok, 1 runtime error (e.g. Redis or LiveKit unreachable), 2 bad input (arguments,
configuration, room names, a room that has no records and is not desired), 3 `state --check` found a
difference, 4 a prerequisite is missing, 5 `state`: a projection is not materialized, or is behind the room's
stream with no consumer running (`room-supervisor consume NAME` catches it up). Output closed early
(`| head`): the command ends quietly with exit 0. `room-supervisor COMMAND --help` says more about each command."""

# name -> (one line for the command list, what it does, examples)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": (
        "run the daemon that supervises rooms",
        "Run the daemon: join every desired room (see `join`) with its pipeline, record every event to Redis,\n"
        "and keep going through LiveKit and Redis outages. SIGTERM drains (exit 0 when every bot left in time),\n"
        "a second SIGTERM or SIGINT exits at once, SIGHUP reloads the settings. Run it under systemd\n"
        "(systemd/room-supervisor.service).",
        "room-supervisor serve --config /etc/room-supervisor/room-supervisor.toml\n"
        "REDIS_URL=redis://127.0.0.1:6379/0 room-supervisor serve --burst   # exit once no room is desired",
    ),
    "join": (
        "ask the daemons to join ROOM (idempotent)",
        "Add ROOM to the desired rooms; a daemon joins it within a moment. Joining a desired room with another\n"
        "pipeline restarts its session with that pipeline; joining a room marked failed tries it again.",
        "room-supervisor join support-42\nroom-supervisor join support-42 --pipeline mybot",
    ),
    "leave": (
        "ask the daemons to leave ROOM (idempotent)",
        "Remove ROOM from the desired rooms; its daemon ends the bot's session gracefully. The room's events\n"
        "stay in Redis.",
        "room-supervisor leave support-42",
    ),
    "rooms": (
        "list rooms: desired, held by which daemon, participants and call state",
        "List the desired rooms and the rooms with recorded events (the newest 1,000), with the daemon and\n"
        "session that hold each, the people present and the call state (when consumers run), and why a room is\n"
        "not wanted any more (WANTED, WHY): failed, with the reason the daemon gave up on it; ended, with the\n"
        "reason its last session ended (room_closed, room_deleted, removed, left, ...).",
        "room-supervisor rooms\nroom-supervisor rooms --json | jq '.rooms | keys'",
    ),
    "events": (
        "print a room's events",
        "Print ROOM's recorded events in order: one line each, or one JSON object per line with --json.\n"
        "--since SEQ is exclusive: the events after SEQ (--since 120 starts at 121). A room that has no records\n"
        "and is not desired is an error (exit 2), so that a typo does not look like an empty room.",
        "room-supervisor events support-42\nroom-supervisor events support-42 --follow --since 120 --json\n"
        "room-supervisor events support-42 | head   # stops quietly, exit 0",
    ),
    "consume": (
        "run a consumer that materializes a projection",
        "Run a consumer group member that folds every room's events into a projection and writes each room's\n"
        "state to Redis (participants, call-state, or module:attribute of your own). Run several with the same\n"
        "projection to share the rooms; each can be stopped and restarted at any time.",
        "room-supervisor consume participants\nroom-supervisor consume call-state --until-caught-up",
    ),
    "state": (
        "print a room's materialized state",
        "Print ROOM's state as the consumers materialized it, and how far it is behind the room's stream (a\n"
        "consumer, `room-supervisor consume NAME`, catches it up). Exit 5 when a state is not materialized, or is\n"
        "behind with no consumer running. --replay rebuilds it from the events instead; --check compares the\n"
        "materialized state with a replay up to the same sequence number (exit 3 when they differ) and reports\n"
        "the lag too. A room that has no records and is not desired is an error (exit 2).",
        "room-supervisor state support-42\nroom-supervisor state support-42 --projection call-state --check\n"
        "room-supervisor consume participants --until-caught-up && room-supervisor state support-42",
    ),
    "archive": (
        "move ended rooms from Redis to the archive ([retention] archive_dir)",
        "Archive every room that nobody wants any more: not desired, no daemon holding it, its last record older\n"
        "than retention.archive_after, and every projection in retention.projections caught up with it. Its records\n"
        "are written to retention.archive_dir (one directory per room: gzip JSON Lines segments and a manifest\n"
        "each), read back and checked, and only then removed from Redis (a tombstone keeps its last seq, so a room\n"
        "joined again continues after it). events, state --replay/--check and the consumers read archived rooms\n"
        "transparently when they are given the same archive_dir. Safe to run as several instances at once and to\n"
        "kill at any point: a later run finishes or redoes the step. --follow runs a pass every\n"
        "retention.interval seconds until SIGTERM or Ctrl-C. Exit 2 when no archive_dir is set.",
        "room-supervisor archive\nroom-supervisor archive --follow\n"
        "zcat /var/lib/room-supervisor/archive/support-42/seg-*.jsonl.gz | jq -c .rec",
    ),
    "call": (
        "join ROOM as a test caller, say TEXT, leave",
        "Join ROOM on LiveKit as a participant (identity rs-caller-XXXXXX, with no right to publish media; the\n"
        "token is made from livekit.url, livekit.api_key and livekit.api_secret), send TEXT as a LiveKit text\n"
        "stream (topic lk.chat unless --topic) and, with --data, as one reliable data packet too (a bot records\n"
        "it as data_received); wait until the sends are done (and 0.3 s more, so that the server forwards them\n"
        "before it sees the caller leave), leave, and say what it did. LiveKit tells the others about a\n"
        "participant that publishes nothing in batches, up to 3 s late: a bot may not record a call this short\n"
        "arriving and leaving, and may record its data packet without a sender. Exit 1 when LiveKit cannot be\n"
        "reached or refuses the key, 2 for bad input (room name, empty or too long text, topic, identity).",
        "room-supervisor call myroom --say hi\n"
        "room-supervisor call myroom --say '{\"intent\": \"book\"}' --data --topic chat\n"
        "room-supervisor join myroom --pipeline echo && room-supervisor call myroom --say hi --data --wait 10",
    ),
    "demo": (
        "run everything on an embedded local stack with a simulated caller (from a source checkout)",
        "Start redis-server and a LiveKit dev server, run `serve`, join a room with the echo pipeline, let a\n"
        "simulated caller speak, send data, leave and rejoin, then print the events and the rebuilt state. Needs\n"
        "a source checkout (`make demo` installs what is missing); nothing leaves this machine. With --hold (the\n"
        "default on a terminal) the stack, the daemon and two consumers stay up until Ctrl-C or SIGTERM, and the\n"
        "demo prints the `export REDIS_URL=... LIVEKIT_URL=...` line to use them from another shell (dev keys);\n"
        "--no-hold (the default without a terminal) stops everything after the report.",
        "make demo\nroom-supervisor demo --no-hold --keep\n"
        "room-supervisor demo --hold > demo.log &   # then: grep '^export' demo.log",
    ),
}

# Secrets to mask in everything printed: the Redis URLs this process was given, wherever they came from.
_SECRET_SOURCES: list[str] = []


def secrets() -> list[str]:
    urls = [*_SECRET_SOURCES, os.environ.get("REDIS_URL", ""), os.environ.get("RS_REDIS_URL", "")]
    return sorted({s for url in urls if url for s in url_secrets(url)}, key=len, reverse=True)


def remember_secrets(urls: Iterable[str | None]) -> None:
    _SECRET_SOURCES.extend(u for u in urls if u and "://" in u and u not in _SECRET_SOURCES)


def redact_text(text: str) -> str:
    return redact(text, secrets())


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors redacted (a URL given in the wrong place is echoed back)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {redact_text(message)}\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML settings file (default: $ROOM_SUPERVISOR_CONFIG)")
    p.add_argument("--redis-url", metavar="URL", help="Redis to use; overrides REDIS_URL and the file")
    p.add_argument("--prefix", metavar="PREFIX", help="prefix of every Redis key (default rs)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _command(sub: argparse._SubParsersAction, name: str, *, common: bool = True) -> argparse.ArgumentParser:
    summary, text, examples = COMMANDS[name]
    indented = "\n".join("  " + line for line in examples.splitlines())
    p = sub.add_parser(name, help=summary, description=text, epilog=f"examples:\n{indented}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    if common:
        _common(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="room-supervisor", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "serve")
    p.add_argument("--burst", action="store_true", help="drain and exit once no desired room is left (batch jobs)")

    p = _command(sub, "join")
    p.add_argument("room", help="the LiveKit room name")
    p.add_argument("--pipeline", default=None, metavar="NAME",
                   help="echo, listen, or a name registered in [pipelines] of the config file or as an entry "
                        "point in room_supervisor.pipelines (default: daemon.default_pipeline)")

    p = _command(sub, "leave")
    p.add_argument("room", help="the LiveKit room name")

    p = _command(sub, "rooms")
    p.add_argument("--json", action="store_true", help="one JSON object")

    p = _command(sub, "events")
    p.add_argument("room", help="the LiveKit room name")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events until Ctrl-C")
    p.add_argument("--since", type=int, default=0, metavar="SEQ",
                   help="only events after sequence number SEQ (exclusive: --since 120 starts at 121)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = _command(sub, "consume")
    p.add_argument("projection", help="participants, call-state, or module:attribute of your own")
    p.add_argument("--until-caught-up", action="store_true", help="exit when nothing is left to read")
    p.add_argument("--instance", help="this consumer's name in its group (default: random)")

    p = _command(sub, "state")
    p.add_argument("room", help="the LiveKit room name")
    p.add_argument("--projection", default=None, help="participants or call-state (default: both)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--replay", action="store_true", help="rebuild from the events instead")
    group.add_argument("--check", action="store_true",
                       help="compare materialized with a replay up to the same seq; exit 3 if different")

    p = _command(sub, "archive")
    p.add_argument("--follow", action="store_true", help="a pass every retention.interval seconds until stopped")
    p.add_argument("--json", action="store_true", help="one JSON object per pass")

    p = _command(sub, "call")
    p.add_argument("room", help="the LiveKit room name")
    p.add_argument("--say", required=True, metavar="TEXT", help="what to send (UTF-8, at most 64 KiB)")
    p.add_argument("--data", action="store_true",
                   help="also send TEXT as one reliable data packet (at most 15,000 bytes): what the event log "
                        "records, as data_received")
    p.add_argument("--topic", default="lk.chat", metavar="TOPIC", help="topic of the text and data (default lk.chat)")
    p.add_argument("--identity", metavar="NAME", help="the caller's identity (default: rs-caller-<random>)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="first wait up to SECONDS for a bot of ours (rs-bot-*) to be in the room (default 0: "
                        "send at once)")

    _demo_arguments(_command(sub, "demo", common=False))
    return parser


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", metavar="DIR", help="where the servers keep their files (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work dir afterwards")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--hold", action="store_true",
                       help="keep the stack up after the report until Ctrl-C or SIGTERM, also without a terminal, "
                            "and print the export line to use it (default on a terminal)")
    group.add_argument("--no-hold", action="store_true",
                       help="stop everything after the report (default when not on a terminal)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
