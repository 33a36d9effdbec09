"""Session churn memory: does the daemon's RSS stay flat while rooms are joined and left again and again?

One sealed livekit-server (in a network namespace of its own as root, else on 127.0.0.1), one private
redis-server on 127.0.0.1, and one daemon process (``python -m supervisor.cli serve``, started with
:class:`supervisor.devstack.daemon_process.DaemonProcess`). Optionally one caller per room: a real ``livekit.rtc``
participant that stays in its room for the whole run and, in every round, sends the bot a data packet and a text
stream once the bot is in (so every session sees a remote participant and records real events).

A round: ``join`` every room (``Control.join``, what ``room-supervisor join`` does) -> wait until every room's
stream has a ``connected`` record of a new session (deadline ``--timeout``) -> (callers send) -> ``leave`` every
room -> wait until every room's stream has that session's ``session_ended`` and the daemon's heartbeat no longer
lists the room (its RoomSession is gone from the registry) -> let the daemon settle -> read its RSS
(``/proc/<pid>/status`` ``VmRSS``, ``/proc/<pid>/smaps_rollup`` ``Anonymous``).

Prints the curve (sessions done -> RSS) on stderr while it runs and one JSON object on stdout: the curve, the RSS
after the first 50 sessions (the first round at which 50 or more sessions have ended; in a run with fewer, the
first round), the RSS after all of them, ``growth_pct`` between the two and ``pass`` = growth within 5%
(``--max-growth``). ``correct`` says whether every round's sessions started and ended (one ``session_started``,
one ``connected``, one ``session_ended`` per room per round, the daemon exited 0 on SIGTERM), ``problems`` what
did not. Exit status: 0 when correct (whatever the memory verdict), 1 when not, 2 for bad arguments.

Looking inside the daemon (``--probe``): the daemon is started with a ``sitecustomize`` that installs a SIGUSR1
handler (the daemon's own code is untouched); after the rounds named by ``--probe-rounds`` the bench sends SIGUSR1
and the handler writes, after ``gc.collect()``: object counts by type, live asyncio tasks by name, rtc handles and
FFI queue subscribers, module-level registries of ours (``_LEAVING``) and pipecat's, and with ``--tracemalloc N``
a tracemalloc snapshot (compared in the JSON: ``tracemalloc_growth``); with ``--trim`` it also calls glibc's
``malloc_trim(0)`` and reports the RSS before and after (the allocator keeping freed memory, not a leak, when it
drops). The probe also counts the log records the rtc FFI hands to Python (``rtc_log_records``), the file
descriptors and threads of the daemon are in every point of the curve, ``--probe-code FILE`` asks more questions
in the daemon, ``--hold S`` keeps each round's sessions S seconds, ``--drain S`` waits up to S seconds after each
round for RSS to stop falling (the verdict then uses that figure). ``--fix NAME`` applies a proposed fix by
monkeypatching in the daemon (see ``FIXES``); ``--daemon-env K=V`` passes e.g. ``MALLOC_ARENA_MAX=2``. A run stops
(a problem) once the daemon passes ``--max-rss-mb``: the machine is shared.

What it found (rtc 1.2.1, pipecat 1.14.0): no object of ours, pipecat's or rtc's outlives its session; the growth
is the rtc FFI's log forwarding (every trace/debug record of every crate, ~14,000 per session, queued without
bound for a Python callback that drops them), which falls behind while the event loop is busy and gives the memory
back only when the daemon idles. ``--fix rtc_capture_off`` turns that forwarding off; ``churn_repro_rtc.py``
shows the same with ``livekit.rtc`` alone.

    python bench/churn.py                        # 25 rooms x 20 rounds = 500 sessions, with callers
    python bench/churn.py --quick                # 4 rooms x 3 rounds (the test)
    python bench/churn.py --fix rtc_capture_off  # the same with the rtc FFI's log capture off
    python bench/churn.py --rooms 20 --rounds 6 --probe --probe-rounds 3,6 --trim
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import REPO_ROOT, RedisServer, emit, environment

BENCH_DIR = Path(__file__).resolve().parent
PROBE_ENV = "RS_CHURN_PROBE"  # the daemon side: directory the SIGUSR1 handler writes its dumps into
FIX_ENV = "RS_CHURN_FIX"  # the daemon side: comma-separated names of FIXES to apply at start


# ----------------------------------------------------------------------------------------------------------------
# The daemon side: imported by the sitecustomize the bench puts first on the daemon's PYTHONPATH. Nothing here runs
# in the daemon unless the bench asked for it.
# ----------------------------------------------------------------------------------------------------------------

def _kb(field_name: str, path: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fds(pid: int | str) -> dict[str, int]:
    """Open file descriptors of ``pid`` by kind (socket, anon_inode, pipe, file)."""
    kinds: dict[str, int] = {}
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            kind = target.split(":", 1)[0] if ":" in target else "file"
            kinds[kind] = kinds.get(kind, 0) + 1
    except OSError:
        pass
    return kinds


def rss_kb(pid: int | str = "self") -> dict[str, Any]:
    """VmRSS, RssAnon (status) and Anonymous (smaps_rollup) of ``pid``, in kB; its threads and open fds."""
    return {"rss_kb": _kb("VmRSS", f"/proc/{pid}/status"), "rss_anon_kb": _kb("RssAnon", f"/proc/{pid}/status"),
            "anonymous_kb": _kb("Anonymous", f"/proc/{pid}/smaps_rollup"),
            "threads": _kb("Threads", f"/proc/{pid}/status"), "fds": _fds(pid)}


def _malloc_trim() -> bool:
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


# The types whose live instances the probe always counts (module, class name), whether or not they grew.
WATCHED = (
    ("supervisor.daemon.session", "RoomSession"), ("supervisor.daemon.session", "StopSignal"),
    ("transport.session", "_Session"), ("transport.recorder", "EventRecorder"),
    ("transport.recording", "RecordingLiveKitTransport"), ("transport.recording", "RecordingClient"),
    ("transport.rtc_details", "RtcDetails"), ("transport.streams", "StreamRecorder"),
    ("livekit.rtc.room", "Room"), ("livekit.rtc.participant", "RemoteParticipant"),
    ("livekit.rtc.participant", "LocalParticipant"), ("livekit.rtc._ffi_client", "FfiHandle"),
    ("livekit.rtc.audio_stream", "AudioStream"), ("livekit.rtc.audio_source", "AudioSource"),
    ("pipecat.processors.frame_processor", "FrameProcessor"), ("pipecat.pipeline.worker", "PipelineWorker"),
    ("pipecat.workers.runner", "WorkerRunner"), ("pipecat.utils.asyncio.task_manager", "TaskManager"),
    ("pipecat.transports.livekit.transport", "LiveKitTransportClient"),
)


def _probe_dump(directory: Path, trim: bool) -> None:
    import gc
    import sys as _sys
    import tracemalloc
    import types
    import weakref
    from collections import Counter

    started = time.monotonic()
    n = len(list(directory.glob("probe-*.json"))) + 1
    before_gc = rss_kb()
    collected = gc.collect()
    objects = gc.get_objects()
    by_type = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)
    watched: dict[str, int] = {}
    for module_name, class_name in WATCHED:
        cls = getattr(_sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type):
            # by the MRO, not isinstance(): an isinstance() check against an ABC puts the type checked into the
            # ABC's (and its subclasses') negative cache, and the probe would watch its own weak references grow
            watched[f"{module_name}.{class_name}"] = sum(1 for o in objects if cls in type(o).__mro__)
    # What the kinds of objects that usually tell little by type alone point at.
    described: Counter[str] = Counter()
    for o in objects:
        kind = type(o)
        if kind is weakref.ReferenceType:
            target, callback = o(), o.__callback__
            described["weakref -> " + (type(target).__qualname__ if target is not None else "dead") + " cb="
                      + (getattr(callback, "__qualname__", type(callback).__qualname__) if callback else "-")] += 1
        elif kind is types.BuiltinMethodType and not isinstance(getattr(o, "__self__", None), types.ModuleType):
            described[f"builtin method {type(o.__self__).__qualname__}.{o.__name__}"] += 1
        elif kind is types.MethodType:
            described[f"bound method {type(o.__self__).__qualname__}.{o.__func__.__qualname__}"] += 1
    # ABC caches (weak references to every class an isinstance/issubclass check against the ABC has seen).
    abc_caches: Counter[str] = Counter()
    try:
        import _abc
        import abc

        for o in objects:
            if abc.ABCMeta in type(o).__mro__:
                registry, cache, negative, _version = _abc._get_dump(o)
                size = len(registry) + len(cache) + len(negative)
                if size:
                    abc_caches[f"{o.__module__}.{o.__qualname__}"] += size
    except Exception:  # noqa: BLE001, S110 - a probe reports what it can
        pass
    tasks = Counter()
    try:
        loop = asyncio.get_running_loop()
        for t in asyncio.all_tasks(loop):
            name = t.get_name()
            tasks[name.split(":")[0] if ":" in name else (t.get_coro().__qualname__ if t.get_coro() else name)] += 1
    except RuntimeError:
        pass
    extra: dict[str, Any] = {}
    ffi = _sys.modules.get("livekit.rtc._ffi_client")
    if ffi is not None:
        extra["ffi_live_handles"] = len(ffi._live_handles)
        client = ffi.FfiClient._instance
        subscribers = list(client.queue._subscribers) if client is not None else []
        extra["ffi_queue_subscribers"] = len(subscribers)
        extra["ffi_queue_subscribers_filtered"] = sum(1 for _q, _l, f in subscribers if f is not None)
        sizes = [q.qsize() for q, _l, _f in subscribers]
        extra["ffi_queued_events"] = sum(sizes)
        extra["ffi_queued_events_max"] = max(sizes, default=0)
    extra["rtc_log_records"] = sum(RTC_LOG_RECORDS.values())
    for level, count in RTC_LOG_RECORDS.items():
        extra[f"rtc_log_records_{level}"] = count
    recording = _sys.modules.get("transport.recording")
    if recording is not None:
        extra["transport_recording__LEAVING"] = len(recording._LEAVING)
    try:
        from loguru import logger

        extra["loguru_handlers"] = len(logger._core.handlers)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001, S110 - a probe reports what it can
        pass
    import logging

    extra["logging_loggers"] = len(logging.Logger.manager.loggerDict)
    extra["sys_modules"] = len(_sys.modules)
    dump: dict[str, Any] = {
        "n": n, "rss_before_gc": before_gc, "rss_after_gc": rss_kb(), "gc_collected": collected,
        "gc_objects": len(objects), "gc_counts": gc.get_count(), "watched": watched, "tasks": dict(tasks),
        "extra": extra, "by_type": dict(by_type.most_common(400)),
        "described": dict(described.most_common(200)),
        "abc_caches": dict(abc_caches.most_common(300)),
    }
    code = directory / "probe_code.py"  # --probe-code: more questions, asked in the daemon with `objects` at hand
    if code.exists():
        namespace: dict[str, Any] = {"objects": objects, "dump": dump, "__name__": "churn_probe_code"}
        try:
            exec(compile(code.read_text(), str(code), "exec"), namespace)  # noqa: S102 - the operator's --probe-code
        except Exception as exc:  # noqa: BLE001 - reported, never raised in the daemon
            dump["probe_code_error"] = repr(exc)
        namespace.clear()
    del objects
    if tracemalloc.is_tracing():
        snap = directory / f"probe-{n:03d}.tmsnap"
        tracemalloc.take_snapshot().dump(str(snap))
        dump["tracemalloc_file"] = str(snap)
        dump["tracemalloc_traced_kb"] = tracemalloc.get_traced_memory()[0] // 1024
    if trim:
        dump["rss_before_trim"] = rss_kb()
        dump["malloc_trim"] = _malloc_trim()
        dump["rss_after_trim"] = rss_kb()
    dump["seconds"] = round(time.monotonic() - started, 3)
    tmp = directory / f".probe-{n:03d}.json"
    tmp.write_text(json.dumps(dump))
    tmp.rename(directory / f"probe-{n:03d}.json")


def daemon_hook() -> None:
    """Run in the daemon process at start (through sitecustomize): the probe's SIGUSR1 handler, and fixes."""
    probe = os.environ.get(PROBE_ENV)
    if probe:
        directory = Path(probe)
        trim = os.environ.get(PROBE_ENV + "_TRIM") == "1"

        def on_usr1(_signum: int, _frame: Any) -> None:
            try:
                _probe_dump(directory, trim)
            except Exception as exc:  # noqa: BLE001 - never take the daemon down
                (directory / "probe-error.txt").write_text(repr(exc))

        signal.signal(signal.SIGUSR1, on_usr1)
        _count_rtc_log_records()
    for name in filter(None, os.environ.get(FIX_ENV, "").split(",")):
        FIXES[name]()


RTC_LOG_RECORDS: dict[str, int] = {}  # log records the rtc FFI shipped to Python, by level (the probe reports them)


def _count_rtc_log_records() -> None:
    """Count every log record the rtc FFI hands to Python: ``ffi_event_callback`` maps each record's level with
    the module-level ``to_python_level``, looked up at call time, so wrapping it sees them all."""
    from livekit.rtc import _ffi_client

    original = _ffi_client.to_python_level
    names = {0: "error", 1: "warn", 2: "info", 3: "debug", 4: "trace"}

    def counting(level: int) -> Any:
        name = names.get(level, str(level))
        RTC_LOG_RECORDS[name] = RTC_LOG_RECORDS.get(name, 0) + 1
        return original(level)

    _ffi_client.to_python_level = counting


def _fix_rtc_capture_off() -> None:
    """The rtc FFI (livekit-ffi, rtc 1.2.1) sets ``log::set_max_level(Trace)`` and, with ``capture_logs`` (what the
    Python SDK asks for), its logger says every record of every crate is enabled and sends each one, formatted, over
    an unbounded channel to one task that calls Python once per record; Python drops all but INFO and above.
    Thousands of debug/trace records per session (tungstenite frames, libwebrtc's port allocator) pile up in that
    channel while the event loop holds the GIL. This turns capture off again right after the SDK turned it on:
    the FFI's own ``env_logger`` then filters by ``RUST_LOG`` (read when the FFI server is created) and writes to
    stderr; nothing is formatted or queued for a level it does not print."""
    os.environ.setdefault("RUST_LOG", "warn")  # before the FFI server exists: its env_logger reads it once
    from livekit.rtc import _ffi_client

    client = _ffi_client.FfiClient.instance  # creates the server, capture on
    client._ffi_lib.livekit_ffi_initialize(_ffi_client.ffi_event_callback, False, b"python",
                                           _ffi_client.__version__.encode("ascii"))


def _fix_malloc_trim() -> None:
    """glibc keeps memory that sessions freed (a saw-tooth of tens of MB between rounds that ``malloc_trim(0)`` gives
    back at once). This asks glibc to return it a moment after a room's session ends, at most once per 2 s."""
    import ctypes

    from supervisor.daemon import session as room_session

    trim = ctypes.CDLL("libc.so.6").malloc_trim
    original = room_session.RoomSession._run
    pending: list[asyncio.TimerHandle] = []

    def run_trim() -> None:
        pending.clear()
        trim(0)

    async def _run(self: Any) -> None:
        try:
            await original(self)
        finally:
            if not pending:
                pending.append(asyncio.get_running_loop().call_later(2.0, run_trim))

    room_session.RoomSession._run = _run


# Proposed fixes, applied by monkeypatching inside the daemon (``--fix NAME``); the report has them as diffs.
FIXES: dict[str, Any] = {"rtc_capture_off": _fix_rtc_capture_off, "malloc_trim": _fix_malloc_trim}


# ----------------------------------------------------------------------------------------------------------------
# The bench side
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Point:
    round: int
    sessions: int
    rss_kb: int
    rss_anon_kb: int
    anonymous_kb: int
    seconds: float  # the round's join -> ended time
    connect_s: float  # join -> every bot connected
    connected_rss_kb: int = 0  # RSS once every bot is connected (and callers' data recorded)
    held_rss_kb: int = 0  # RSS at the end of --hold, before the leave
    threads: int = 0
    fds: dict[str, int] = field(default_factory=dict)
    settled_rss_kb: int = 0  # with --drain: RSS once it stopped falling
    settle_s: float = 0.0
    probe: dict[str, Any] | None = None


@dataclass
class Run:
    args: argparse.Namespace
    rooms: list[str]
    points: list[Point] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    started: int = 0
    connected: int = 0
    ended: int = 0
    data_recorded: int = 0
    text_recorded: int = 0
    end_reasons: dict[str, int] = field(default_factory=dict)


class Caller:
    """One real rtc participant in one room for the whole run; publishes nothing, subscribes to nothing."""

    def __init__(self, url: str, room: str, identity: str) -> None:
        self.url, self.room_name, self.identity = url, room, identity
        self.room: Any = None

    async def join(self) -> None:
        from livekit import rtc

        from supervisor.devstack.participant import mint_token

        self.room = rtc.Room()
        await asyncio.wait_for(self.room.connect(self.url, mint_token(self.room_name, self.identity),
                                                 rtc.RoomOptions(auto_subscribe=False)), 30)

    async def speak(self, n: int) -> None:
        lp = self.room.local_participant
        await lp.publish_data(f"churn {n}".encode(), reliable=True, topic="churn")
        await lp.send_text(f"churn text {n}", topic="churn")

    async def leave(self) -> None:
        if self.room is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.room.disconnect(), 10)
            self.room = None


async def wait_rooms(what: str, rooms: list[str], check, timeout: float, interval: float = 0.25) -> float:
    """Poll ``check(room)`` for every room not yet done until all are (seconds taken) or ``timeout`` (raises)."""
    started = time.monotonic()
    pending = list(rooms)
    while pending:
        done = await asyncio.gather(*(check(room) for room in pending))
        pending = [room for room, ok in zip(pending, done) if not ok]
        if not pending:
            break
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: {len(pending)} of {len(rooms)} room(s) not there after {timeout:.0f}s "
                               f"(e.g. {pending[:3]})")
        await asyncio.sleep(interval)
    return time.monotonic() - started


async def one_round(run: Run, n: int, daemon: Any, redis: Any, callers: dict[str, Caller]) -> Point:
    from eventstore.keys import Keys
    from eventstore.reader import RoomReader
    from eventstore.records import tag_of
    from supervisor.control import Control
    from supervisor.heartbeat import read_heartbeat

    args, rooms = run.args, run.rooms
    keys = Keys()
    reader, control = RoomReader(redis, keys), Control(redis, keys)
    base = dict(zip(rooms, await asyncio.gather(*(reader.last_seq(r) for r in rooms))))
    seen: dict[str, list[Any]] = {room: [] for room in rooms}

    async def records(room: str) -> list[Any]:
        new = await reader.read(room, since=seen[room][-1].seq if seen[room] else base[room])
        seen[room].extend(new)
        return seen[room]

    async def connected(room: str) -> bool:
        return any(tag_of(r) == "connected" for r in await records(room))

    async def ended(room: str) -> bool:
        return any(tag_of(r) == "session_ended" for r in await records(room))

    started = time.monotonic()
    for room in rooms:
        await control.join(room, args.pipeline)
    connect_s = await wait_rooms(f"round {n}: bots connected", rooms, connected, args.timeout)
    if callers:
        await asyncio.gather(*(c.speak(n) for c in callers.values()))

        async def heard(room: str) -> bool:
            types = [tag_of(r) for r in await records(room)]
            return "data_received" in types and "text_stream_received" in types

        try:
            await wait_rooms(f"round {n}: caller's data recorded", rooms, heard, min(args.timeout, 30))
        except TimeoutError as exc:  # information, not a failure of the session's life
            print(f"churn: {exc}", file=sys.stderr)
    connected_rss = rss_kb(daemon.pid)
    if args.hold:  # the sessions stay a while: does the daemon grow while they run?
        held = time.monotonic()
        while time.monotonic() - held < args.hold:
            await asyncio.sleep(min(5.0, args.hold))
            print(f"churn:   round {n}: {time.monotonic() - held:5.1f}s into the hold, rss "
                  f"{rss_kb(daemon.pid)['rss_kb'] / 1024:.1f} MB", file=sys.stderr)
    held_rss = rss_kb(daemon.pid)
    for room in rooms:
        await control.leave(room)
    await wait_rooms(f"round {n}: sessions ended", rooms, ended, args.timeout)

    async def released(_room: str) -> bool:
        beat = await read_heartbeat(redis, keys, daemon.id)
        return beat is not None and not beat.rooms

    await wait_rooms(f"round {n}: the daemon holds no room", rooms[:1], released, args.timeout)
    seconds = time.monotonic() - started
    for room in rooms:
        types = [tag_of(r) for r in seen[room]]
        started_n, connected_n, ended_n = (types.count(t) for t in ("session_started", "connected", "session_ended"))
        run.started += started_n
        run.connected += connected_n
        run.ended += ended_n
        run.data_recorded += types.count("data_received")
        run.text_recorded += types.count("text_stream_received")
        for r in seen[room]:
            if tag_of(r) == "session_ended":
                run.end_reasons[r.reason] = run.end_reasons.get(r.reason, 0) + 1
        if (started_n, connected_n, ended_n) != (1, 1, 1):
            run.problems.append(f"round {n} room {room}: {started_n} session_started, {connected_n} connected, "
                                f"{ended_n} session_ended (expected one each)")
        sessions = {r.session for r in seen[room]}
        if len(sessions) != 1:
            run.problems.append(f"round {n} room {room}: records of {len(sessions)} sessions")
    await asyncio.sleep(args.settle)
    point = Point(n, n * len(rooms), **rss_kb(daemon.pid), seconds=round(seconds, 2), connect_s=round(connect_s, 2),
                  connected_rss_kb=connected_rss["rss_kb"], held_rss_kb=held_rss["rss_kb"])
    point.settled_rss_kb, point.settle_s = await settled_rss(daemon.pid, args.drain)
    return point


async def settled_rss(pid: int, limit: float, step: float = 5.0) -> tuple[int, float]:
    """RSS once it stops falling (less than 1% in ``step`` seconds), waiting at most ``limit`` seconds: memory the
    daemon still holds for work that outlived the sessions (the rtc FFI's log backlog drains this way)."""
    started = time.monotonic()
    last = rss_kb(pid)["rss_kb"]
    while time.monotonic() - started < limit:
        await asyncio.sleep(step)
        now = rss_kb(pid)["rss_kb"]
        if now > last * 0.99:
            return now, round(time.monotonic() - started, 1)
        last = now
    return last, round(time.monotonic() - started, 1)


async def probe(daemon: Any, directory: Path, timeout: float = 60.0) -> dict[str, Any]:
    before = set(directory.glob("probe-*.json"))
    daemon.signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = set(directory.glob("probe-*.json")) - before
        if new:
            return json.loads(max(new).read_text())
        if (directory / "probe-error.txt").exists():
            raise RuntimeError("probe failed in the daemon: " + (directory / "probe-error.txt").read_text())
        await asyncio.sleep(0.2)
    raise TimeoutError("the daemon wrote no probe dump")


def probe_growth(first: dict[str, Any], last: dict[str, Any], sessions: int) -> dict[str, Any]:
    """What grew between two probe dumps: type counts, watched types, tasks, registries."""
    def grew(a: dict[str, int], b: dict[str, int], limit: int = 40) -> dict[str, int]:
        delta = {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b)}
        return dict(sorted(((k, v) for k, v in delta.items() if v), key=lambda kv: -abs(kv[1]))[:limit])

    return {"sessions_between": sessions, "by_type": grew(first["by_type"], last["by_type"]),
            "watched": grew(first["watched"], last["watched"]), "tasks": grew(first["tasks"], last["tasks"]),
            "extra": grew(first["extra"], last["extra"]),
            "described": grew(first.get("described", {}), last.get("described", {}), 20),
            "abc_caches": grew(first.get("abc_caches", {}), last.get("abc_caches", {}), 20),
            "gc_objects": last["gc_objects"] - first["gc_objects"],
            "rss_after_gc_kb": last["rss_after_gc"]["rss_kb"] - first["rss_after_gc"]["rss_kb"]}


def tracemalloc_growth(first: str, last: str, limit: int = 25) -> list[dict[str, Any]]:
    import tracemalloc

    a, b = tracemalloc.Snapshot.load(first), tracemalloc.Snapshot.load(last)
    out = []
    for stat in b.compare_to(a, "traceback")[:limit]:
        out.append({"kb": round(stat.size_diff / 1024, 1), "count": stat.count_diff,
                    "where": [f"{f.filename.replace(str(REPO_ROOT) + '/', '')}:{f.lineno}"
                              for f in stat.traceback[-6:]]})
    return out


def admission_off() -> dict[str, Any]:
    """One daemon must take every room of a round, however loaded the machine is: admission by load off where the
    tree has it (``daemon.load_threshold`` 1.0; a tree without the setting would refuse the key)."""
    from supervisor.settings import DaemonSettings

    return {"load_threshold": 1.0} if "load_threshold" in DaemonSettings.__struct_fields__ else {}


def sitecustomize(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(BENCH_DIR)!r})\n"
        "import churn\n"
        "churn.daemon_hook()\n")
    return directory


def result_of(run: Run, daemon_env: dict[str, str], extra: dict[str, Any]) -> dict[str, Any]:
    args = run.args
    points = [p for p in run.points if p.round > 0]
    ref = next((p for p in points if p.sessions >= args.reference), points[0] if points else None)
    last = points[-1] if points else None

    def growth(key: str) -> float | None:
        if ref is None or last is None or not getattr(ref, key):
            return None
        return round(100.0 * (getattr(last, key) - getattr(ref, key)) / getattr(ref, key), 2)

    # The verdict's figure: RSS a --settle pause after each round, or with --drain once it stopped falling.
    key = "settled_rss_kb" if args.drain else "rss_kb"
    per_session = None
    if ref is not None and last is not None and last.sessions > ref.sessions:
        per_session = round((getattr(last, key) - getattr(ref, key)) / (last.sessions - ref.sessions), 1)
    growth_pct = growth(key)
    correct = not run.problems and len(points) == args.rounds
    return {
        "rooms": len(run.rooms), "rounds": args.rounds, "pipeline": args.pipeline, "callers": args.callers,
        "sessions": run.ended, "sessions_started": run.started, "sessions_connected": run.connected,
        "end_reasons": run.end_reasons, "data_recorded": run.data_recorded, "text_recorded": run.text_recorded,
        "curve": [{"round": p.round, "sessions": p.sessions, "rss_kb": p.rss_kb, "rss_anon_kb": p.rss_anon_kb,
                   "anonymous_kb": p.anonymous_kb, "threads": p.threads, "fds": p.fds, "connected_rss_kb": p.connected_rss_kb,
                   "held_rss_kb": p.held_rss_kb, "settled_rss_kb": p.settled_rss_kb, "settle_s": p.settle_s,
                   "round_s": p.seconds, "connect_s": p.connect_s}
                  for p in run.points],
        "reference_sessions": ref.sessions if ref else None,
        "measured": key,
        "rss_after_first_50_kb": getattr(ref, key) if ref else None,
        "rss_after_all_kb": getattr(last, key) if last else None,
        "growth_pct": growth_pct, "immediate_growth_pct": growth("rss_kb"),
        "anonymous_growth_pct": growth("anonymous_kb"),
        "kb_per_session_after_reference": per_session,
        "max_growth_pct": args.max_growth,
        "pass": bool(correct and growth_pct is not None and growth_pct <= args.max_growth
                     and ref is not None and ref.sessions >= args.reference),
        "correct": correct, "problems": run.problems[:20],
        "daemon_env": daemon_env, "fixes": args.fix, **extra, "environment": environment(),
    }


async def run_churn(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    from eventstore.connection import connect
    from supervisor.devstack.daemon_process import DaemonProcess
    from supervisor.devstack.livekit_server import LiveKitServer, livekit_binary
    from supervisor.devstack.netns import NetNamespace, cleanup_stale
    from supervisor.devstack.stack import sealed_mode

    livekit_binary()  # fails early, with the command to build it
    tag = uuid.uuid4().hex[:6]
    run = Run(args, [f"churn-{tag}-{i:03d}" for i in range(args.rooms)])
    workdir = Path(tempfile.mkdtemp(prefix="rs-churn-"))
    probe_dir = workdir / "probe"
    daemon_env = dict(kv.split("=", 1) for kv in args.daemon_env)
    env = dict(daemon_env)
    if args.probe or args.fix or args.tracemalloc:
        probe_dir.mkdir()
        env[PROBE_ENV] = str(probe_dir)
        env["PYTHONPATH"] = f"{sitecustomize(workdir / 'site')}:{REPO_ROOT}"
        if args.trim:
            env[PROBE_ENV + "_TRIM"] = "1"
        if args.probe_code:
            shutil.copy(args.probe_code, probe_dir / "probe_code.py")
        if args.fix:
            env[FIX_ENV] = ",".join(args.fix)
        if args.tracemalloc:
            env["PYTHONTRACEMALLOC"] = str(args.tracemalloc)
    extra: dict[str, Any] = {}
    probes: list[tuple[Point, dict[str, Any]]] = []
    netns = redis_server = livekit = daemon = redis = None
    callers: dict[str, Caller] = {}
    clean_exit = True
    try:
        redis_server = RedisServer("rs-churn-redis-").start()
        if sealed_mode():
            cleanup_stale()
            netns = NetNamespace().create()
        livekit = LiveKitServer(workdir / "livekit", netns).start()
        print(f"churn: livekit {livekit.url} ({'namespace ' + netns.name if netns else 'loopback'}), redis "
              f"{redis_server.url}, workdir {workdir}", file=sys.stderr)
        daemon = DaemonProcess(workdir / "daemon", redis_server.url, livekit.url, daemon_id=f"churn-{tag}", env=env,
                               lease_ttl=3.0, reconcile_interval=0.5, rejoin_base=0.2, rejoin_max=2.0,
                               drain_timeout=20.0, max_rooms=max(200, args.rooms), **admission_off())
        redis = connect(redis_server.url)
        if args.callers:
            callers = {room: Caller(livekit.url, room, f"caller-{i:03d}") for i, room in enumerate(run.rooms)}
            gate = asyncio.Semaphore(4)  # a few at a time: 25 joins at once time out on a busy 2-core machine

            async def join(caller: Caller) -> None:
                async with gate:
                    await caller.join()

            await asyncio.gather(*(join(c) for c in callers.values()))
        daemon.start()
        from eventstore.keys import Keys
        from supervisor.heartbeat import read_heartbeat

        async def ready(_room: str) -> bool:
            if not daemon.running:
                raise RuntimeError(f"the daemon exited: {daemon.log_tail(30)}")
            beat = await read_heartbeat(redis, Keys(), daemon.id)
            return beat is not None and beat.state == "ready"

        await wait_rooms("daemon ready", ["-"], ready, 60)
        await asyncio.sleep(args.settle)
        point = Point(0, 0, **rss_kb(daemon.pid), seconds=0.0, connect_s=0.0)
        run.points.append(point)
        print(f"churn: sessions={0:4d} rss={point.rss_kb / 1024:7.1f} MB anonymous={point.anonymous_kb / 1024:7.1f}"
              " MB (daemon ready, before the first round)", file=sys.stderr)
        for n in range(1, args.rounds + 1):
            if run.points[-1].rss_kb > args.max_rss_mb * 1024:
                run.problems.append(f"stopped before round {n}: the daemon's RSS {run.points[-1].rss_kb // 1024} MB is "
                                    f"over --max-rss-mb {args.max_rss_mb}")
                break
            point = await one_round(run, n, daemon, redis, callers)
            if args.probe and (not args.probe_rounds or n in args.probe_rounds):
                point.probe = await probe(daemon, probe_dir)
                probes.append((point, point.probe))
            run.points.append(point)
            trim = f" settled {point.settled_rss_kb / 1024:.1f} MB after {point.settle_s:.0f}s" if args.drain else ""
            if point.probe and "rss_after_trim" in point.probe:
                trim += f" after malloc_trim {point.probe['rss_after_trim']['rss_kb'] / 1024:.1f} MB"
            print(f"churn: sessions={point.sessions:4d} rss={point.rss_kb / 1024:7.1f} MB anonymous="
                  f"{point.anonymous_kb / 1024:7.1f} MB  (in the room {point.held_rss_kb / 1024:.1f} MB; round {n}: "
                  f"{point.seconds:.1f}s, connected in "
                  f"{point.connect_s:.1f}s){trim}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        run.problems.append(f"{type(exc).__name__}: {exc}")
        if daemon is not None:
            print(f"churn: daemon log tail:\n{daemon.log_tail(40)}", file=sys.stderr)
    finally:
        await asyncio.gather(*(c.leave() for c in callers.values()))
        if daemon is not None and daemon.proc is not None:
            code, took = daemon.stop()
            extra["daemon_exit"] = code
            if code != 0:
                clean_exit = False
                run.problems.append(f"the daemon exited {code} after SIGTERM ({took:.1f}s)")
        if redis is not None:
            await redis.aclose()
        for stop in (livekit and livekit.stop, redis_server and redis_server.stop, netns and netns.destroy):
            if stop:
                try:
                    stop()
                except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                    print(f"churn: cleanup step failed: {exc}", file=sys.stderr)
    if len(probes) >= 2:
        (p0, first), (p1, last) = probes[0], probes[-1]
        extra["probe_growth"] = probe_growth(first, last, p1.sessions - p0.sessions)
        extra["probe_first"] = {k: first[k] for k in ("watched", "extra", "tasks", "gc_objects")}
        extra["probe_last"] = {k: last[k] for k in ("watched", "extra", "tasks", "gc_objects")}
        if first.get("tracemalloc_file") and last.get("tracemalloc_file"):
            extra["tracemalloc_growth"] = tracemalloc_growth(first["tracemalloc_file"], last["tracemalloc_file"])
            extra["tracemalloc_traced_kb"] = [first["tracemalloc_traced_kb"], last["tracemalloc_traced_kb"]]
    if probes and "rss_after_trim" in probes[-1][1]:
        extra["malloc_trim"] = [{"sessions": p.sessions, "before_kb": d["rss_before_trim"]["rss_kb"],
                                 "after_kb": d["rss_after_trim"]["rss_kb"]} for p, d in probes]
    result = result_of(run, daemon_env, extra)
    if args.keep:
        result["workdir"] = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return result, result["correct"] and clean_exit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rooms", type=int, default=25, help="rooms joined and left in every round")
    p.add_argument("--rounds", type=int, default=20, help="rounds of join -> connected -> leave -> ended")
    p.add_argument("--quick", action="store_true", help="4 rooms x 3 rounds (a correctness check, for the tests)")
    p.add_argument("--pipeline", default="listen", help="the pipeline joined with (built in: listen, echo)")
    p.add_argument("--callers", action=argparse.BooleanOptionalAction, default=True,
                   help="a real rtc caller in every room that sends data and a text stream each round")
    p.add_argument("--timeout", type=float, default=120.0, help="deadline of each wait in a round, s")
    p.add_argument("--hold", type=float, default=0.0, help="keep the sessions this long once connected, s")
    p.add_argument("--settle", type=float, default=2.0, help="pause before RSS is read after a round, s")
    p.add_argument("--drain", type=float, default=0.0,
                   help="after each round, wait up to this long for RSS to stop falling (settled_rss_kb), s")
    p.add_argument("--reference", type=int, default=50, help="sessions after which the reference RSS is taken")
    p.add_argument("--max-growth", type=float, default=5.0, help="RSS growth allowed after the reference, %%")
    p.add_argument("--max-rss-mb", type=int, default=4000,
                   help="stop (a problem) when the daemon's RSS passes this: the machine is shared")
    p.add_argument("--probe", action="store_true", help="dump object counts in the daemon after --probe-rounds")
    p.add_argument("--probe-rounds", default="", help="comma-separated rounds to probe after (default: every one)")
    p.add_argument("--probe-code", type=Path, metavar="FILE",
                   help="with --probe: a Python file run in the daemon at each probe with `objects` (gc.get_objects()) "
                        "and `dump` (the probe's dict: put answers in it) at hand")
    p.add_argument("--trim", action="store_true", help="with --probe: malloc_trim(0) in the daemon at each probe")
    p.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                   help="start the daemon with PYTHONTRACEMALLOC=FRAMES (implies --probe)")
    p.add_argument("--fix", action="append", default=[], choices=sorted(FIXES) or None,
                   help="apply a proposed fix in the daemon by monkeypatching (repeatable)")
    p.add_argument("--daemon-env", action="append", default=[], metavar="K=V", help="extra daemon environment")
    p.add_argument("--keep", action="store_true", help="keep the work directory (daemon log, probe dumps)")
    args = p.parse_args(argv)
    if args.quick:
        args.rooms, args.rounds = 4, 3
    if args.tracemalloc:
        args.probe = True
    args.probe_rounds = {int(x) for x in args.probe_rounds.split(",") if x.strip()}
    if args.rooms < 1 or args.rounds < 1 or any("=" not in kv for kv in args.daemon_env):
        p.error("--rooms and --rounds must be at least 1; --daemon-env takes K=V")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result, ok = asyncio.run(run_churn(args))
    emit(result)
    return 0 if ok else 1


if __name__ == "__main__":
    code = main()
    # Leave without the rtc FFI's atexit dispose: after the callers' rooms were disconnected it sometimes aborts the
    # process ("panic in a function that cannot unwind", SIGABRT) once the JSON is already out (rtc 1.2.1).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
