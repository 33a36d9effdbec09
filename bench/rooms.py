"""Capacity: how many live rooms one room-supervisor daemon holds, against process-per-call pipecat bots.

    python bench/rooms.py              # listen 5..200 rooms, echo 5..40, baseline 6 processes each: <= ~15 min
    python bench/rooms.py --quick      # 2 rooms per pipeline, one short step, 2 baseline processes: ~1.5 min
    python bench/rooms.py --listen-steps 10,50 --echo-steps 5 --window 10 --baseline 4

Starts a real redis-server and a real livekit-server (sealed in a network namespace of its own when run as
root, else on 127.0.0.1, exactly as the tests do), and per pipeline (``listen``, then ``echo``) a fresh
``room-supervisor serve`` (``supervisor.devstack.daemon_process.DaemonProcess``). Callers run in separate
processes (``bench/rooms_callers.py``, many ``livekit.rtc`` Rooms each): each joins one room, publishes a tone
and sends a data message every second that carries its send time.

The number of live rooms goes up in steps. At each step the new rooms are requested (the first room of a
pipeline with the real ``room-supervisor join ROOM --pipeline NAME``, the others with
``supervisor.control.Control.join``, the call that command makes: a Python start-up per room would cost ~0.6 s of
CPU each), their callers join, and once every room of the step has a connected bot (a ``connected`` record in
its stream, and the caller sees the bot) and a short settling time has passed, one window is measured: the
daemon's CPU (whole process, and its main thread, the one asyncio loop whose 100% is the ceiling), RSS, its
event-loop lag (its heartbeat's ``loop_lag_p50``/``loop_lag_p99``; the ``/metrics`` gauge, a 10 s maximum, when
the heartbeat has none), record latency (each record's ``ts`` -> the moment this bench's ``XREAD BLOCK`` reader
sees it) and caller -> stream latency (the send time in a data message -> the reader seeing its
``data_received`` record), plus the CPU of the callers, LiveKit, Redis, this bench and the whole machine.
Stepping stops when the loop lag p99 is over twice the budget (20 ms) in two steps in a row, when the callers
fall behind real time, or when a step's rooms do not all get a bot.

Then the baseline, in the same run with the same callers: one plain pipecat ``LiveKitTransport`` process per
room (``bench/rooms_baseline.py``), with the same processors as the built-in pipeline; its CPU and RSS per room.
It records nothing to Redis.

Human lines on stderr while it runs; one JSON object on stdout at the end. Exit status 0 when every correctness
check passed (every requested room got a bot, records flowed, every data message sent reached its room's
stream, every baseline process connected and heard its caller), whatever the figures; 1 otherwise; 2 for bad
arguments. Only loopback and the network namespace the bench creates are used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from common import REPO_ROOT, emit, environment  # first: puts the repository on sys.path

warnings.filterwarnings("ignore", message="The HMAC key is")  # the dev stack's short key, on purpose

from rooms_fleet import BaselineProc, Callers, Stack
from rooms_measure import (
    BUDGET_S,
    CLK_TCK,
    KEYS,
    LAG_METRIC,
    LAG_WINDOW_S,
    MIN_CALLER_REALTIME,
    PIPELINES,
    STOP_FACTOR,
    CpuMeter,
    StreamReader,
    latency,
    main_thread_ticks,
    ms,
    pss_kb,
    rss_kb,
    say,
    thread_cpu,
    thread_ticks,
    threads,
)
from rooms_report import report

from eventstore.connection import connect
from supervisor.control import Control
from supervisor.devstack.daemon_process import DaemonProcess, clean_env
from supervisor.devstack.livekit_server import LiveKitServer, livekit_binary
from supervisor.devstack.netns import NetNamespace, cleanup_stale
from supervisor.devstack.redis_server import RedisServer
from supervisor.devstack.stack import sealed_mode
from supervisor.settings import DaemonSettings

# --- the run -----------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack, callers: Callers, reader: StreamReader) -> None:
        self.args, self.stack, self.callers, self.reader = args, stack, callers, reader
        self.redis = connect(stack.redis.url)
        self.control = Control(self.redis, KEYS)
        self.run_id = secrets.token_hex(3)
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.steps: list[dict[str, Any]] = []
        self.idle: dict[str, dict[str, Any]] = {}
        self.stopped: dict[str, str] = {}
        self.data_check: dict[str, dict[str, int]] = {}
        self.lag_sources: set[str] = set()
        self.unmeasured: dict[str, int] = {}  # pipeline -> the step whose rooms did not all get a bot

    def problem(self, text: str) -> None:
        say(f"  PROBLEM: {text}")
        self.problems.append(text)

    def room_names(self, kind: str, start: int, stop: int) -> list[str]:
        return [f"bench-{kind}-{self.run_id}-{i:04d}" for i in range(start, stop)]

    # --- ours ---

    async def ours(self, pipeline: str, steps: list[int]) -> None:
        args = self.args
        extra: dict[str, Any] = {}
        if "load_threshold" in DaemonSettings.__struct_fields__:
            extra["load_threshold"] = 100.0  # admission by load off: the bench, not the daemon, decides how many
        daemon = DaemonProcess(self.stack.workdir / f"daemon-{pipeline}", self.stack.redis.url,
                               self.stack.livekit.url, daemon_id=f"bench-{pipeline}-{self.run_id}",
                               max_rooms=max(steps) + 10, **extra)
        rooms: list[str] = []
        say(f"==> {pipeline}: starting room-supervisor serve")
        daemon.start()
        try:
            await self._wait_ready(daemon)
            await asyncio.sleep(args.settle)
            idle = await self._measure_ours(daemon, pipeline, [], args.idle_window)
            self.idle[pipeline] = idle
            say(f"  idle daemon: cpu {idle['daemon']['cpu']:.3f} cores, rss {idle['daemon']['rss_mb']} MB, loop lag "
                f"p50 {idle['loop_lag']['p50_ms']} p99 {idle['loop_lag']['p99_ms']} ms, machine busy "
                f"{idle['cpu_other']['machine_busy']:.2f}")
            over_before: float | None = None
            for target in steps:
                new = self.room_names(pipeline, len(rooms), target)
                started = time.monotonic()
                await self._request(new, pipeline, first=not rooms)
                self.reader.add(new)
                self.callers.join(new)
                rooms += new
                missing = await self._wait_bots(rooms, lambda r: self._our_bot(r), len(new))
                join_s = round(time.monotonic() - started, 1)
                if missing:
                    what = (f"{len(missing)} of {len(rooms)} rooms without a connected bot after {join_s}s (e.g. "
                            f"{missing[:3]})")
                    if over_before:
                        # the step before was already well over budget: this is the daemon (or the machine)
                        # out of capacity, what stepping looks for, not a correctness failure
                        self.stopped[pipeline] = f"overloaded at {target} rooms: {what}"
                        say(f"  stop: {self.stopped[pipeline]}")
                    else:
                        self.problem(f"{pipeline}: {what}")
                        self.stopped[pipeline] = f"rooms without a bot at {target}"
                    self.unmeasured[pipeline] = target
                    # Shed this step's rooms so the machine recovers before the data check: what is late then
                    # arrives, and what is still missing was lost.
                    await self._leave_rooms(new)
                    rooms = rooms[: len(rooms) - len(new)]
                    break
                await asyncio.sleep(args.settle)
                step = await self._measure_ours(daemon, pipeline, rooms, args.window)
                step["join_seconds"] = join_s
                self.steps.append(step)
                self._say_step(step)
                quiet = [r for r in rooms if not self.reader.window_data.get(r)]
                if quiet:
                    self.problem(f"{pipeline} at {target} rooms: no data_received record seen in the window for "
                                 f"{len(quiet)} rooms (e.g. {quiet[:3]})")
                p99 = step["loop_lag"]["p99_ms"]
                realtime = step["callers"]["audio_realtime"]
                over = p99 is not None and p99 > STOP_FACTOR * BUDGET_S * 1000
                if over and over_before:
                    self.stopped[pipeline] = (f"loop lag p99 > {STOP_FACTOR:g} x budget in two steps in a row "
                                              f"({over_before} ms, then {p99} ms at {target} rooms)")
                elif realtime is not None and realtime < MIN_CALLER_REALTIME:
                    self.stopped[pipeline] = (f"callers fell behind at {target} rooms (audio_realtime {realtime}): "
                                              "more rooms would not load the daemon more")
                if pipeline in self.stopped:
                    say(f"  stop: {self.stopped[pipeline]}")
                    break
                over_before = p99 if over else None
            if rooms:
                await self._check_data(pipeline, rooms)
        finally:
            await self._end_ours(daemon, rooms)

    async def _wait_ready(self, daemon: DaemonProcess) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            beat = await self._heartbeat(daemon.id)
            if beat and beat.get("state") == "ready":
                return
            if not daemon.running:
                raise RuntimeError(f"daemon exited with {daemon.proc.returncode if daemon.proc else None}:\n"
                                   f"{daemon.log_tail(40)}")
            await asyncio.sleep(0.2)
        raise RuntimeError(f"daemon not ready within 90 s:\n{daemon.log_tail(40)}")

    async def _heartbeat(self, daemon_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(KEYS.daemon(daemon_id))
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    async def _request(self, rooms: list[str], pipeline: str, first: bool) -> None:
        """The first room of a pipeline through the real CLI, the rest through the call it makes."""
        if first and rooms:
            env = clean_env({"REDIS_URL": self.stack.redis.url})
            done = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "supervisor.cli", "join", rooms[0], "--pipeline", pipeline, cwd=REPO_ROOT,
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            _out, err = await done.communicate()
            if done.returncode != 0:
                self.problem(f"room-supervisor join {rooms[0]} exited {done.returncode}: {err.decode()[-500:]}")
            rooms = rooms[1:]
        for room in rooms:
            await self.control.join(room, pipeline)

    def _our_bot(self, room: str) -> bool:
        seen = self.reader.rooms.get(room)
        return bool(seen and seen.bots) and self.callers.bot_in(room)

    async def _wait_bots(self, rooms: list[str], has_bot, new: int) -> list[str]:
        """Wait (bounded) until every room has its bot; each room's caller starts its data messages as soon as
        its bot is there. Returns the rooms still without one."""
        deadline = time.monotonic() + self.args.join_timeout + 0.5 * new
        while True:
            missing = []
            for room in rooms:
                if has_bot(room):
                    self.callers.start_data(room)
                else:
                    missing.append(room)
            if not missing or time.monotonic() >= deadline:
                return missing
            await asyncio.sleep(0.25)

    async def _measure_ours(self, daemon: DaemonProcess, pipeline: str, rooms: list[str],
                            window: float) -> dict[str, Any]:
        groups = {"daemon": [daemon.pid], "callers": self.callers.pids, "livekit": [self.stack.livekit.proc.pid],
                  "redis": [self.stack.redis.proc.pid], "bench": [os.getpid()]}
        meter = CpuMeter(groups, {"daemon": daemon.pid})
        before = await self.callers.stats()  # also resets the callers' loop-lag samples
        self.reader.open_window()
        meter.start()
        started = time.time()
        threads_before = thread_ticks(daemon.pid)
        caller_threads_before = thread_ticks(self.callers.pids[0])
        beats: list[dict[str, Any]] = []
        gauge: list[float] = []
        end = time.monotonic() + window
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(1.0, left))
            beat = await self._heartbeat(daemon.id)
            if beat and beat.get("updated", 0) >= started and beat not in beats:
                beats.append(beat)
            if not beat or "loop_lag_p99" not in beat:
                gauge.append(await daemon.metric(LAG_METRIC))
        cpu = meter.stop()
        by_thread = thread_cpu(threads_before, thread_ticks(daemon.pid), window)
        caller_by_thread = thread_cpu(caller_threads_before, thread_ticks(self.callers.pids[0]), window)
        self.reader.close_window()
        caller_stats = await self.callers.stats()
        sent = sum(s["data_sent"] for s in caller_stats) - sum(s["data_sent"] for s in before)
        elapsed = window
        step = {
            "pipeline": pipeline, "rooms": len(rooms), "window_s": window,
            "daemon": {"cpu": cpu["daemon"], "cpu_main_thread": cpu["daemon_main_thread"],
                       "rss_mb": round(rss_kb(daemon.pid) / 1024, 1), "threads": threads(daemon.pid),
                       "cpu_by_thread": by_thread},
            "loop_lag": self._loop_lag(beats, gauge, started + min(LAG_WINDOW_S, window)),
            "record_latency": latency(self.reader.record_lat),
            "caller_to_stream": latency(self.reader.data_lat),
            "records_per_s": round(self.reader.window_records / elapsed, 1),
            "data_sent_in_window": sent,
            "callers": self._caller_figures(cpu["callers"], caller_stats, before, len(rooms), window) | {
                "cpu_by_thread_first_process": caller_by_thread},
            "cpu_other": {"livekit": cpu["livekit"], "redis": cpu["redis"], "bench_reader": cpu["bench"],
                          "machine_busy": cpu["machine_busy"],
                          "not_ours": round(max(0.0, cpu["machine_busy"] - sum(
                              cpu[g] for g in ("daemon", "callers", "livekit", "redis", "bench"))), 3)},
        }
        extra = {k: beats[-1][k] for k in ("cpu", "load") if beats and k in beats[-1]}
        if extra:
            step["daemon"]["heartbeat"] = extra
        return step

    def _loop_lag(self, beats: list[dict[str, Any]], gauge: list[float], covered_from: float) -> dict[str, Any]:
        with_pct = [b for b in beats if b.get("loop_lag_p99") is not None]
        # the heartbeat's figures cover the daemon's last 10 s: those written once that much of the window
        # had passed cover the window only (the settling time and the joins before it are out)
        inside = [b for b in with_pct if b.get("updated", 0) >= covered_from]
        with_pct = inside or with_pct[-1:]
        if with_pct:
            self.lag_sources.add("heartbeat")
            return {"source": "heartbeat loop_lag_p50/p99 (the daemon's last 10 s; max of the p99s, median of the "
                              "p50s, of the heartbeats written once 10 s of the window had passed, else the last)",
                    "p50_ms": ms(statistics.median(b["loop_lag_p50"] for b in with_pct if b.get("loop_lag_p50")
                                                   is not None) if any(b.get("loop_lag_p50") is not None
                                                                        for b in with_pct) else None),
                    "p99_ms": ms(max(b["loop_lag_p99"] for b in with_pct)), "heartbeats": len(with_pct)}
        self.lag_sources.add("metrics")
        return {"source": f"/metrics {LAG_METRIC} (the largest lag of the daemon's last 10 s; heartbeat has no "
                          "loop_lag_p99): p99_ms is the median of those maxima, max_ms their max; no p50",
                "p50_ms": None, "p99_ms": ms(statistics.median(gauge)) if gauge else None,
                "max_ms": ms(max(gauge, default=None)), "samples": len(gauge)}

    def _caller_figures(self, cpu: float, stats: list[dict], before: list[dict], rooms: int,
                        window: float) -> dict[str, Any]:
        """The callers in a window: CPU, RSS, their own loop lag, and ``audio_realtime``: tone frames captured /
        frames of real time for ``rooms`` callers (below 1: the callers fell behind and the bots heard less)."""
        lags = [s["loop_lag_p99"] for s in stats if s.get("loop_lag_p99") is not None]
        frames = sum(s["frames"] for s in stats) - sum(s["frames"] for s in before)
        due = rooms * window * 1000 / self.args.frame_ms
        return {"processes": len(stats), "cpu": cpu, "audio_realtime": round(frames / due, 3) if due else None,
                "rss_mb": round(sum(rss_kb(p) for p in self.callers.pids) / 1024, 1),
                "loop_lag_p99_ms": ms(max(lags, default=None)),
                "loop_lag_max_ms": ms(max((s["loop_lag_max"] or 0 for s in stats), default=None)),
                "errors": sum(s["errors"] for s in stats)}

    def _say_step(self, s: dict[str, Any]) -> None:
        d, lag = s["daemon"], s["loop_lag"]
        say(f"  {s['pipeline']:6} {s['rooms']:4} rooms: daemon cpu {d['cpu']:.2f} (main thread "
            f"{d['cpu_main_thread']:.2f}) rss {d['rss_mb']} MB | loop lag p50 {lag['p50_ms']} p99 {lag['p99_ms']} ms "
            f"| record p50/p99 {s['record_latency']['p50_ms']}/{s['record_latency']['p99_ms']} ms, caller->stream "
            f"p99 {s['caller_to_stream']['p99_ms']} ms, {s['records_per_s']} rec/s | callers cpu "
            f"{s['callers']['cpu']:.2f} (audio {s['callers']['audio_realtime']} x real time), livekit "
            f"{s['cpu_other']['livekit']:.2f}, machine busy {s['cpu_other']['machine_busy']:.2f} of which not ours "
            f"{s['cpu_other']['not_ours']:.2f} (joined in {s.get('join_seconds')} s)")

    async def _check_data(self, pipeline: str, rooms: list[str]) -> None:
        """Stop the data messages, let the last ones land, then every message sent must be in its room's stream
        exactly once (the reader counts data_received records of the room's whole life)."""
        self.callers.stop_data(rooms)
        await asyncio.sleep(2)  # stop_data returns in the callers within a second (their send period)
        sent: dict[str, int] = {}
        for s in await self.callers.stats():
            sent |= s.get("sent_by_room", {})
        # A loaded daemon may still be writing: wait until every room has all, or nothing came for 10 s.
        waited, last, quiet_since = time.monotonic(), -1, time.monotonic()
        while time.monotonic() - waited < 90:
            now_seen = sum(self.reader.rooms[r].data for r in rooms)
            if all(self.reader.rooms[r].data >= sent.get(r, 0) for r in rooms):
                break
            if now_seen != last:
                last, quiet_since = now_seen, time.monotonic()
            elif time.monotonic() - quiet_since > 10:
                break
            await asyncio.sleep(0.25)
        seen = {r: self.reader.rooms[r].data for r in rooms}
        restarted = {r for r in rooms if len(self.reader.rooms[r].bots) > 1 or self.reader.rooms[r].ended}
        wrong = {r: (sent.get(r, 0), seen[r]) for r in rooms if sent.get(r, 0) != seen[r]}
        self.data_check[pipeline] = {"rooms": len(rooms), "sent": sum(sent.get(r, 0) for r in rooms),
                                     "recorded": sum(seen.values()), "rooms_differing": len(wrong),
                                     "rooms_with_more_than_one_bot_session": len(restarted),
                                     "seconds_waited_for_the_last": round(time.monotonic() - waited, 1),
                                     "after_overloaded_step": self.unmeasured.get(pipeline)}
        steady = {r: v for r, v in wrong.items() if r not in restarted}
        if steady:
            sample = dict(list(steady.items())[:3])
            kinds = {r: {k: v for k, v in self.reader.rooms[r].types.items() if k not in ("data_received",)}
                     for r in list(steady)[:2]}
            self.data_check[pipeline]["sample_rooms_record_types"] = kinds
            overload = f" (after an overloaded step at {self.unmeasured[pipeline]} rooms)" \
                if pipeline in self.unmeasured else ""
            self.problem(f"{pipeline}: data messages sent != data_received records in {len(steady)} rooms whose "
                         f"bot never left{overload} (room: (sent, recorded)) {sample}; their other records: {kinds}")
        if restarted:
            self.notes.append(f"{pipeline}: {len(restarted)} rooms had more than one bot session during the run "
                              f"(e.g. {sorted(restarted)[:3]}); messages sent while a bot was away reach nobody, "
                              f"so those rooms are left out of the data check ({len(wrong) - len(steady)} differ)")

    async def _leave_rooms(self, rooms: list[str]) -> None:
        for room in rooms:
            with contextlib.suppress(Exception):
                await self.control.leave(room)
        await self.callers.leave(rooms)

    async def _end_ours(self, daemon: DaemonProcess, rooms: list[str]) -> None:
        """Leave the rooms, then stop the daemon, whatever failed before (it must never outlive the bench)."""
        try:
            for room in rooms:
                with contextlib.suppress(Exception):
                    await self.control.leave(room)
            deadline = time.monotonic() + 30
            while rooms and daemon.running and time.monotonic() < deadline:
                beat = await self._heartbeat(daemon.id)
                if beat is not None and not beat.get("rooms"):
                    break
                await asyncio.sleep(0.5)
            await self.callers.leave(rooms)
        finally:
            code, took = await asyncio.to_thread(daemon.stop, 40.0)
        say(f"  daemon stopped (exit {code}, {took:.1f} s)")
        if code not in (0, None):
            self.problem(f"{daemon.id} exited {code} on SIGTERM:\n{daemon.log_tail(20)}")

    # --- the baseline ---

    async def baseline(self, pipeline: str, count: int) -> dict[str, Any]:
        rooms = self.room_names(f"base-{pipeline}", 0, count)
        say(f"==> baseline {pipeline}: {count} plain pipecat processes, one per room")
        self.callers.join(rooms)
        procs: dict[str, BaselineProc] = {}
        try:
            for i in range(0, count, 2):  # two start-ups at a time: each imports pipecat (seconds of CPU)
                for room in rooms[i:i + 2]:
                    procs[room] = await BaselineProc.start(self.stack, room, pipeline)
                await self._wait_bots(rooms[i:i + 2], lambda r: procs[r].connected or procs[r].exited, 2)
            missing = await self._wait_bots(rooms, lambda r: procs[r].connected and self.callers.bot_in(r), count)
            if missing:
                self.problem(f"baseline {pipeline}: {len(missing)} of {count} processes without a bot seen by its "
                             f"caller (e.g. {missing[:3]}; exit codes "
                             f"{[procs[r].proc.returncode for r in missing[:3]]})")
            await asyncio.sleep(self.args.settle)
            pids = [p.proc.pid for p in procs.values() if p.proc.returncode is None]
            meter = CpuMeter({"baseline": pids, "callers": self.callers.pids,
                              "livekit": [self.stack.livekit.proc.pid]}, {})
            main = {pid: main_thread_ticks(pid) for pid in pids}
            for p in procs.values():
                p.latencies.clear()
            before = await self.callers.stats()  # also resets the callers' loop-lag samples
            meter.start()
            first_before = thread_ticks(pids[0]) if pids else {}
            await asyncio.sleep(self.args.window)
            cpu = meter.stop()
            first_by_thread = thread_cpu(first_before, thread_ticks(pids[0]), self.args.window) if pids else {}
            main_cpu = sum(main_thread_ticks(pid) - t for pid, t in main.items()) / CLK_TCK / self.args.window
            caller_stats = await self.callers.stats()
            rss = sum(rss_kb(pid) for pid in pids) / 1024
            pss = sum(pss_kb(pid) for pid in pids) / 1024
            lat = [x for p in procs.values() for x in p.latencies]
            deaf = [r for r, p in procs.items() if not p.latencies]
            if deaf:
                self.problem(f"baseline {pipeline}: no data message reached {len(deaf)} processes in the window "
                             f"(e.g. {deaf[:3]})")
            n = len(pids) or 1
            result = {
                "processes": count, "running": len(pids), "connected": sum(p.connected for p in procs.values()),
                "window_s": self.args.window,
                "cpu": cpu["baseline"], "cpu_main_threads": round(main_cpu, 3),
                "cpu_per_room": round(cpu["baseline"] / n, 4), "cpu_main_thread_per_room": round(main_cpu / n, 4),
                "rss_mb": round(rss, 1), "rss_per_room_mb": round(rss / n, 1), "pss_per_room_mb": round(pss / n, 1),
                "cpu_by_thread_first_process": first_by_thread,
                "data_to_handler": latency(lat), "data_messages": sum(p.data for p in procs.values()),
                "callers": self._caller_figures(cpu["callers"], caller_stats, before, count, self.args.window),
                "cpu_other": {"livekit": cpu["livekit"], "machine_busy": cpu["machine_busy"]},
            }
            say(f"  baseline {pipeline} x{count}: cpu {result['cpu']:.2f} ({result['cpu_per_room']:.3f}/room, main "
                f"threads {result['cpu_main_thread_per_room']:.3f}/room), rss {result['rss_per_room_mb']} MB/room "
                f"(pss {result['pss_per_room_mb']}), data->handler p99 {result['data_to_handler']['p99_ms']} ms, "
                f"callers cpu {result['callers']['cpu']:.2f}, machine busy {cpu['machine_busy']:.2f}")
            return result
        finally:
            await asyncio.gather(*(p.stop() for p in procs.values()))
            await self.callers.leave(rooms)

    async def aclose(self) -> None:
        await self.redis.aclose()


# --- main --------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, env: dict[str, Any], workdir: Path) -> dict[str, Any]:
    started = time.monotonic()
    livekit_binary()
    netns = None
    if sealed_mode():
        cleanup_stale()
        netns = NetNamespace().create()
    stack = Stack(RedisServer(workdir / "redis"), LiveKitServer(workdir / "livekit", netns), netns, workdir)
    callers: Callers | None = None
    reader: StreamReader | None = None
    bench: Bench | None = None
    try:
        stack.redis.start()
        stack.livekit.start()
        say(f"==> redis-server {stack.redis.url}, livekit-server {stack.livekit.url} "
            f"({'network namespace ' + netns.name if netns else 'loopback'}); work dir {workdir}")
        callers = Callers(stack.livekit.url, args.callers, workdir, args.sample_rate, args.frame_ms,
                          args.caller_nice)
        await callers.start()
        reader = StreamReader(stack.redis.url)
        reader.start()
        bench = Bench(args, stack, callers, reader)
        baseline: dict[str, Any] = {}
        for pipeline in PIPELINES:
            steps = getattr(args, f"{pipeline}_steps")
            if not steps:
                continue
            await bench.ours(pipeline, steps)
            if args.baseline:
                baseline[pipeline] = await bench.baseline(pipeline, args.baseline)
        return report(bench, args, env, baseline, started)
    finally:
        for closer in (bench and bench.aclose, reader and reader.aclose, callers and callers.aclose):
            if closer:
                try:
                    await closer()
                except Exception as exc:  # noqa: BLE001 - keep closing the rest
                    say(f"warning: cleanup: {exc!r}")
        stack.livekit.stop()
        stack.redis.stop()
        if netns is not None:
            netns.destroy()


def steps_arg(text: str) -> list[int]:
    steps = [int(x) for x in text.split(",") if x.strip()] if text.strip() else []
    if any(s < 1 for s in steps) or steps != sorted(set(steps)):
        raise argparse.ArgumentTypeError("steps must be increasing positive room counts, e.g. 10,25,50")
    return steps


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="2 rooms per pipeline, one 5 s step, 2 baseline processes per pipeline (the test)")
    p.add_argument("--listen-steps", type=steps_arg, help="room counts for listen (default 5,10,25,50,100,150,200)")
    p.add_argument("--echo-steps", type=steps_arg, help="room counts for echo (default 5,10,20,40)")
    p.add_argument("--window", type=float, help="seconds measured per step (default 15; quick 5)")
    p.add_argument("--settle", type=float, help="seconds between the last bot joining and the window (default 5)")
    p.add_argument("--idle-window", type=float, default=None, help="seconds the idle daemon is measured")
    p.add_argument("--baseline", type=int, help="baseline processes per pipeline (default 6; quick 2; 0: none)")
    p.add_argument("--callers", type=int, help="caller processes (default 2; quick 1)")
    p.add_argument("--sample-rate", type=int, default=16000, help="callers' tone sample rate")
    p.add_argument("--frame-ms", type=int, default=100, help="callers' capture frame length, 20-100 ms")
    p.add_argument("--caller-nice", type=int, default=10,
                   help="nice value of the caller processes (default 10: in production callers are not on the "
                        "daemon's host, so they yield the CPU to it; their real-time ratio shows if they keep up)")
    p.add_argument("--join-timeout", type=float, default=60.0,
                   help="seconds a step's rooms may take to get their bots (plus 0.5 s per new room)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs) even when all passed")
    args = p.parse_args()
    quick = args.quick
    defaults = {"listen_steps": [2] if quick else [5, 10, 25, 50, 100, 150, 200],
                "echo_steps": [2] if quick else [5, 10, 20, 40],
                "window": 5.0 if quick else 15.0, "settle": 2.0 if quick else 5.0,
                "baseline": 2 if quick else 6, "callers": 1 if quick else 2}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.idle_window is None:
        args.idle_window = 3.0 if quick else 8.0
    if args.callers < 1 or args.baseline < 0 or args.window <= 0 or args.frame_ms not in range(20, 101, 10):
        p.error("--callers >= 1, --baseline >= 0, --window > 0, --frame-ms one of 20, 30, ..., 100")
    return args


def main() -> int:
    args = parse_args()
    env = environment()  # before the run: the load average says what else shares the machine
    workdir = Path(tempfile.mkdtemp(prefix="bench-rooms-"))
    result: dict[str, Any] | None = None
    try:
        try:
            import uvloop

            result = uvloop.run(run(args, env, workdir))
        except ImportError:
            result = asyncio.run(run(args, env, workdir))
    except Exception as exc:  # noqa: BLE001 - the run failed: say so in the one JSON object
        import traceback

        traceback.print_exc()
        result = {"bench": "rooms", "quick": args.quick, **env, "pass": False,
                  "problems": [f"run failed: {exc!r}"], "work_dir": str(workdir)}
    if result.get("pass") and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        result["work_dir"] = str(workdir)
        say(f"logs kept in {workdir}")
    emit(result)
    sys.stdout.flush()
    return 0 if result.get("pass") else 1


if __name__ == "__main__":
    sys.exit(main())
