"""Reproducer: a process that connects ``livekit.rtc`` rooms and leaves them again, round after round, with
nothing of ours and nothing of pipecat in it. Does its RSS come back after every Room is gone?

It starts its own sealed livekit-server (a network namespace of its own as root, else 127.0.0.1; the same
``supervisor.devstack`` helpers the tests use: only the server comes from this repository) and, in this
process, per round: ``--rooms`` ``rtc.Room()`` connect (a few at a time), each publishes one audio track from an
``rtc.AudioSource(48000, 1)`` as a pipecat bot does (``--publish``) and, with ``--capture``, pushes 10 ms frames of
silence into it for ``--seconds`` (pipecat's output transport does so while the bot is silent); then
``room.disconnect()`` and ``source.aclose()`` for every room, every reference dropped, ``gc.collect()``, a pause,
and this process's ``VmRSS`` and Python's own allocations (``tracemalloc``, if started with ``--tracemalloc``).
After the last round every rtc object is gone from Python (``FfiHandle``s alive, ``FfiClient`` queue subscribers,
``gc`` objects of ``livekit.rtc`` types are printed): what RSS still grows is native (``liblivekit_ffi.so``).

What it shows (rtc 1.2.1): with 15 or more rooms at once, RSS grows by megabytes per Room although nothing of rtc
is left in Python and ``malloc_trim`` gives nothing back; ``--strings`` finds the memory full of log-record fields
(``libwebrtc::imp::peer_connection_factory``, tungstenite's ``opcode: BINARY`` frame traces, libwebrtc's
``basic_port_allocator.cc`` lines); ``--linger 60`` shows it come back once the process idles (the FFI's unbounded
log channel draining); ``--no-capture`` (the FFI's log capture off after livekit.rtc turned it on) keeps RSS flat.

    python bench/churn_repro_rtc.py --rooms 15 --rounds 4 --seconds 3 --hard-exit               # grows
    python bench/churn_repro_rtc.py --rooms 15 --rounds 4 --seconds 3 --hard-exit --no-capture  # flat
    python bench/churn_repro_rtc.py --rooms 15 --rounds 3 --seconds 3 --linger 60 --strings     # drains; what it held
    python bench/churn_repro_rtc.py --rooms 25 --rounds 6 --publish --capture --seconds 10       # as a pipecat bot

Prints the curve on stderr and a JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from churn import _fix_rtc_capture_off, _malloc_trim, rss_kb
from common import REPO_ROOT, emit, environment  # noqa: F401 - puts the repository on sys.path


async def one_round(url: str, rooms: list[str], args: argparse.Namespace, n: int) -> dict:
    from livekit import rtc

    from supervisor.devstack.participant import mint_token

    gate = asyncio.Semaphore(args.parallel)
    held: list[tuple[rtc.Room, rtc.AudioSource | None, asyncio.Task | None]] = []
    silence = bytes(960 * 2)

    async def capture(source: rtc.AudioSource) -> None:
        frame = rtc.AudioFrame(silence, 48000, 1, 480)
        while True:
            await source.capture_frame(frame)

    async def join(room_name: str, i: int) -> None:
        async with gate:
            room = rtc.Room()
            await asyncio.wait_for(room.connect(url, mint_token(room_name, f"bot-{n}-{i}"),
                                                rtc.RoomOptions(auto_subscribe=True)), 60)
            source = task = None
            if args.publish:
                source = rtc.AudioSource(48000, 1)
                track = rtc.LocalAudioTrack.create_audio_track("out", source)
                options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
                await room.local_participant.publish_track(track, options)
                if args.capture:
                    task = asyncio.get_running_loop().create_task(capture(source))
            held.append((room, source, task))

    started = time.monotonic()
    await asyncio.gather(*(join(r, i) for i, r in enumerate(rooms)))
    connected = rss_kb()["rss_kb"]
    await asyncio.sleep(args.seconds)
    in_room = rss_kb()["rss_kb"]
    for room, source, task in held:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await room.disconnect()
        if source is not None:
            await source.aclose()
    held.clear()
    gc.collect()
    await asyncio.sleep(args.settle)
    gc.collect()
    trimmed = None
    if args.trim:  # glibc keeping freed memory (fragmentation) would come back here; a leak would not
        before = rss_kb()["rss_kb"]
        _malloc_trim()
        trimmed = {"before_kb": before, "after_kb": rss_kb()["rss_kb"]}
    return {"round": n, "trim": trimmed, "sessions": n * len(rooms), **rss_kb(), "connected_rss_kb": connected,
            "in_room_rss_kb": in_room, "round_s": round(time.monotonic() - started, 2),
            "python_traced_kb": tracemalloc.get_traced_memory()[0] // 1024 if tracemalloc.is_tracing() else None}


def heap_strings(limit: int = 40) -> list[tuple[str, int]]:
    """The most frequent printable strings (8+ bytes) in this process's anonymous writable memory: what memory that
    no Python object owns holds (log lines? serialized events? SDP?)."""
    import re
    from collections import Counter

    found: Counter[str] = Counter()
    pattern = re.compile(rb"[\x20-\x7e]{8,}")
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
        for line in maps:
            parts = line.split()
            if len(parts) > 5 and not parts[5].startswith("[heap"):
                continue  # anonymous mappings (malloc arenas, mmapped chunks) and the main heap only
            if "rw" not in parts[1]:
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            for m in pattern.finditer(data):
                found[m.group()[:80].decode("ascii")] += 1
    return found.most_common(limit)


def rtc_leftovers() -> dict:
    from livekit.rtc import _ffi_client

    client = _ffi_client.FfiClient._instance
    counts: dict[str, int] = {}
    for o in gc.get_objects():
        module = type(o).__dict__.get("__module__")
        if isinstance(module, str) and module.startswith("livekit.rtc") and not isinstance(o, type):
            name = f"{module}.{type(o).__qualname__}"
            counts[name] = counts.get(name, 0) + 1
    return {"ffi_live_handles": len(_ffi_client._live_handles),
            "ffi_queue_subscribers": len(client.queue._subscribers) if client else 0,
            "rtc_objects": dict(sorted(counts.items(), key=lambda kv: -kv[1])[:15])}


async def main_async(args: argparse.Namespace) -> dict:
    from livekit import rtc

    from supervisor.devstack.livekit_server import LiveKitServer
    from supervisor.devstack.netns import NetNamespace, cleanup_stale
    from supervisor.devstack.participant import mint_token
    from supervisor.devstack.stack import sealed_mode

    if args.no_capture:  # the rtc FFI's own logger (RUST_LOG, stderr) instead of forwarding every record to Python
        _fix_rtc_capture_off()
    netns = None
    workdir = Path(tempfile.mkdtemp(prefix="rs-churn-repro-"))
    if sealed_mode():
        cleanup_stale()
        netns = NetNamespace().create()
    server = LiveKitServer(workdir / "livekit", netns).start()
    peers: list[rtc.Room] = []
    curve = [{"round": 0, "sessions": 0, **rss_kb()}]
    try:
        rooms = [f"repro-{i:03d}" for i in range(args.rooms)]
        if args.daemon_like:  # someone else in every room, as a caller in the daemon's rooms (not counted in RSS:
            for i, name in enumerate(rooms):  # they are in this process too, but connected once, before round 0)
                peer = rtc.Room()
                await peer.connect(server.url, mint_token(name, f"peer-{i}"), rtc.RoomOptions(auto_subscribe=False))
                peers.append(peer)
            gc.collect()
            curve[0] = {"round": 0, "sessions": 0, **rss_kb()}
        print(f"repro: sessions=   0 rss={curve[0]['rss_kb'] / 1024:7.1f} MB", file=sys.stderr)
        for n in range(1, args.rounds + 1):
            point = await one_round(server.url, rooms, args, n)
            curve.append(point)
            print(f"repro: sessions={point['sessions']:4d} rss={point['rss_kb'] / 1024:7.1f} MB threads="
                  f"{point['threads']} fds={point['fds']} (in the rooms "
                  f"{point['in_room_rss_kb'] / 1024:.1f} MB; python traced {point['python_traced_kb']} kB)"
                  + (f" after malloc_trim {point['trim']['after_kb'] / 1024:.1f} MB" if point["trim"] else ""),
                  file=sys.stderr)
        lingered = []
        started = time.monotonic()
        while time.monotonic() - started < args.linger:  # no room left: does the memory come back with time?
            await asyncio.sleep(10)
            before = rss_kb()["rss_kb"]
            _malloc_trim()
            lingered.append({"after_s": round(time.monotonic() - started), "rss_kb": before,
                             "after_trim_kb": rss_kb()["rss_kb"]})
            print(f"repro: {lingered[-1]['after_s']:3d}s after the last round: rss={before / 1024:7.1f} MB, after "
                  f"malloc_trim {lingered[-1]['after_trim_kb'] / 1024:.1f} MB", file=sys.stderr)
        leftovers = rtc_leftovers()
        leftovers["lingered"] = lingered
        if args.strings:
            leftovers["heap_strings"] = heap_strings()
    finally:
        for peer in peers:
            await peer.disconnect()
        server.stop()
        if netns is not None:
            netns.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    first, last = curve[1], curve[-1]
    return {"rooms": args.rooms, "rounds": args.rounds, "publish": args.publish, "capture": args.capture,
            "log_capture": not args.no_capture,
            "seconds": args.seconds, "daemon_like": args.daemon_like, "curve": curve,
            "growth_after_round_1_kb": last["rss_kb"] - first["rss_kb"],
            "kb_per_session_after_round_1": round((last["rss_kb"] - first["rss_kb"])
                                                  / max(1, last["sessions"] - first["sessions"]), 1),
            "python_traced_growth_kb": (last["python_traced_kb"] - first["python_traced_kb"])
            if last.get("python_traced_kb") is not None else None,
            "after_last_round": leftovers, "rtc_version": rtc.__version__, "environment": environment()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rooms", type=int, default=25)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--parallel", type=int, default=5, help="connects at a time")
    p.add_argument("--publish", action="store_true", help="publish an audio track from an AudioSource per room")
    p.add_argument("--capture", action="store_true", help="with --publish: push 10 ms frames of silence into it")
    p.add_argument("--seconds", type=float, default=5.0, help="time in the rooms per round")
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--daemon-like", action="store_true", help="another participant in every room")
    p.add_argument("--no-capture", action="store_true",
                   help="turn the FFI's log capture off after livekit.rtc turned it on (RUST_LOG=warn to stderr)")
    p.add_argument("--linger", type=float, default=0.0, help="after the last round, watch RSS this long, s")
    p.add_argument("--strings", action="store_true", help="after the last round: the most frequent strings in memory")
    p.add_argument("--hard-exit", action="store_true", help="os._exit(0) after the output: the FFI is not disposed")
    p.add_argument("--trim", action="store_true", help="malloc_trim(0) after every round (RSS before and after)")
    p.add_argument("--tracemalloc", action="store_true", help="trace Python's own allocations (1 frame)")
    args = p.parse_args()
    if args.tracemalloc:
        tracemalloc.start(1)
    result = asyncio.run(main_async(args))
    emit(result)
    if args.hard_exit:  # no atexit: the FFI is not disposed (under heaptrack, what is still allocated shows as leaked)
        sys.stdout.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
