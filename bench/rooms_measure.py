"""What ``bench/rooms.py`` measures with: process and thread CPU and memory from ``/proc``, latency
figures, and the ``XREAD BLOCK`` reader of the room streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", message="The HMAC key is")  # the dev stack's short key, on purpose

from eventstore.connection import connect
from eventstore.keys import Keys

BENCH = Path(__file__).resolve().parent
KEYS = Keys()
BUDGET_S = 0.020  # loop lag p99 a step must stay within
STOP_FACTOR = 2.0  # stepping stops once loop lag p99 exceeds this many budgets
CLK_TCK = os.sysconf("SC_CLK_TCK")
PIPELINES = ("listen", "echo")
LAG_METRIC = "room_supervisor_loop_lag_seconds"
MIN_CALLER_REALTIME = 0.9  # stepping stops when the callers capture less of the tone than this share of real time
LAG_WINDOW_S = 10.0  # what the heartbeat's loop_lag_p50/p99 cover (supervisor.daemon.load.WINDOW)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- /proc -------------------------------------------------------------------------------------------------


def _stat_ticks(path: str) -> int:
    """utime + stime (clock ticks) from a /proc stat file; 0 when the process is gone."""
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5), counted after the name


def proc_ticks(pid: int) -> int:
    return _stat_ticks(f"/proc/{pid}/stat")


def main_thread_ticks(pid: int) -> int:
    return _stat_ticks(f"/proc/{pid}/task/{pid}/stat")


def _status_kb(pid: int, field_name: str, path: str = "status") -> int:
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmRSS")


def pss_kb(pid: int) -> int:
    return _status_kb(pid, "Pss", "smaps_rollup")


def threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def thread_ticks(pid: int) -> dict[str, int]:
    """CPU ticks per thread name of ``pid`` (threads of one name summed; digits dropped: ``worker-3`` ->
    ``worker-``)."""
    out: dict[str, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip().rstrip("0123456789") or "?"
        except OSError:
            continue
        if tid == str(pid):
            name = "main (event loop)"
        out[name] = out.get(name, 0) + _stat_ticks(f"/proc/{pid}/task/{tid}/stat")
    return out


def thread_cpu(before: dict[str, int], after: dict[str, int], elapsed: float, top: int = 6) -> dict[str, float]:
    """The ``top`` thread names by CPU between two :func:`thread_ticks` (cores); threads gone meanwhile are lost."""
    used = {name: (ticks - before.get(name, 0)) / CLK_TCK / elapsed for name, ticks in after.items()}
    ranked = sorted(used.items(), key=lambda kv: -kv[1])
    return {name: round(cpu, 3) for name, cpu in ranked[:top] if cpu > 0}


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]] + [0] * 8
    busy = v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq (guest is inside user already)
    return busy, busy + v[3] + v[4] + v[7]  # + idle iowait steal


class CpuMeter:
    """CPU used by named groups of processes between :meth:`start` and :meth:`stop`, in cores (1.0 = one core
    busy the whole time)."""

    def __init__(self, groups: dict[str, list[int]], main_threads: dict[str, int]) -> None:
        self.groups, self.main_threads = groups, main_threads

    def _snap(self) -> dict[str, int]:
        snap = {name: sum(proc_ticks(p) for p in pids) for name, pids in self.groups.items()}
        snap |= {f"{name}_main_thread": main_thread_ticks(pid) for name, pid in self.main_threads.items()}
        return snap

    def start(self) -> None:
        self.t0, self.a = time.monotonic(), self._snap()
        self.m0 = machine_busy_ticks()

    def stop(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.t0
        b = self._snap()
        m1 = machine_busy_ticks()
        out = {name: round((b[name] - self.a[name]) / CLK_TCK / elapsed, 3) for name in b}
        busy, total = m1[0] - self.m0[0], m1[1] - self.m0[1]
        cpus = os.cpu_count() or 1
        out["machine_busy"] = round(cpus * busy / total, 3) if total else 0.0
        return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def latency(values: list[float]) -> dict[str, Any]:
    return {"p50_ms": ms(pct(values, 0.5)), "p99_ms": ms(pct(values, 0.99)), "max_ms": ms(max(values, default=None)),
            "count": len(values)}


# --- the reader --------------------------------------------------------------------------------------------


@dataclass
class RoomSeen:
    records: int = 0
    data: int = 0
    bots: list[str] = field(default_factory=list)  # identities of `connected` records, in order
    ended: int = 0
    types: dict[str, int] = field(default_factory=dict)  # record type -> count


class StreamReader:
    """``XREAD BLOCK`` over every bench room's stream; the moment a reply arrives is when a record is "seen"."""

    BLOCK_MS = 200

    def __init__(self, redis_url: str) -> None:
        self.redis = connect(redis_url, socket_timeout=10)
        self.ids: dict[bytes, bytes] = {}
        self.room_of: dict[bytes, str] = {}
        self.rooms: dict[str, RoomSeen] = {}
        self.window_start: float | None = None
        self.record_lat: list[float] = []
        self.data_lat: list[float] = []
        self.window_records = 0
        self.window_data: dict[str, int] = {}
        self.task: asyncio.Task | None = None
        self.errors: list[str] = []

    def add(self, rooms: list[str]) -> None:
        for room in rooms:
            key = KEYS.events(room).encode()
            self.ids[key] = b"0-0"
            self.room_of[key] = room
            self.rooms[room] = RoomSeen()

    def open_window(self) -> None:
        self.record_lat, self.data_lat, self.window_records, self.window_data = [], [], 0, {}
        self.window_start = time.time()

    def close_window(self) -> None:
        self.window_start = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="bench-reader")

    async def _run(self) -> None:
        while True:
            if not self.ids:
                await asyncio.sleep(0.05)
                continue
            try:
                reply = await self.redis.xread(dict(self.ids), count=1000, block=self.BLOCK_MS)
            except Exception as exc:  # noqa: BLE001 - reported; the reader goes on
                self.errors.append(repr(exc)[:200])
                await asyncio.sleep(0.2)
                continue
            seen = time.time()
            for key, entries in reply or ():
                self._take(key, entries, seen)

    def _take(self, key: bytes, entries: list, seen: float) -> None:
        room = self.room_of[key]
        info = self.rooms[room]
        start = self.window_start
        for entry_id, fields in entries:
            self.ids[key] = entry_id
            info.records += 1
            kind = fields.get(b"type")
            name = kind.decode(errors="replace") if kind else "?"
            info.types[name] = info.types.get(name, 0) + 1
            rec: dict[str, Any] | None = None
            if kind in (b"connected", b"session_ended") or start is not None:
                rec = json.loads(fields[b"rec"])
            if kind == b"connected":
                assert rec is not None
                info.bots.append(rec.get("identity", ""))
            elif kind == b"session_ended":
                info.ended += 1
            elif kind == b"data_received":
                info.data += 1
            if start is None or rec is None or rec["ts"] < start:
                continue
            self.window_records += 1
            self.record_lat.append(seen - rec["ts"])
            if kind == b"data_received":
                self.window_data[room] = self.window_data.get(room, 0) + 1
                try:
                    self.data_lat.append(seen - float(fields.get(b"data", b"")))
                except ValueError:
                    pass

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.redis.aclose()
