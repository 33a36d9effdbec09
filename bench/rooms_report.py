"""The figures ``bench/rooms.py`` prints: per pipeline, against the baseline."""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

from common import ratio  # first: puts the repository on sys.path

warnings.filterwarnings("ignore", message="The HMAC key is")  # the dev stack's short key, on purpose


from typing import TYPE_CHECKING

from rooms_measure import BUDGET_S, LAG_METRIC, PIPELINES, STOP_FACTOR

if TYPE_CHECKING:
    from rooms import Bench

# --- results -----------------------------------------------------------------------------------------------


def pipeline_result(bench: Bench, pipeline: str) -> dict[str, Any]:
    steps = [s for s in bench.steps if s["pipeline"] == pipeline]
    idle = bench.idle.get(pipeline)
    within = [s for s in steps if s["loop_lag"]["p99_ms"] is not None and s["loop_lag"]["p99_ms"] <= BUDGET_S * 1000]
    out: dict[str, Any] = {"steps_measured": [s["rooms"] for s in steps], "stopped": bench.stopped.get(pipeline),
                           "by_step": [{"rooms": s["rooms"], "daemon_cpu": s["daemon"]["cpu"],
                                        "daemon_cpu_main_thread": s["daemon"]["cpu_main_thread"],
                                        "rss_mb": s["daemon"]["rss_mb"], "loop_lag_p99_ms": s["loop_lag"]["p99_ms"],
                                        "record_latency_p99_ms": s["record_latency"]["p99_ms"],
                                        "callers_cpu": s["callers"]["cpu"],
                                        "machine_busy": s["cpu_other"]["machine_busy"],
                                        "not_ours": s["cpu_other"]["not_ours"]} for s in steps],
                           "unmeasured_step_without_all_bots": bench.unmeasured.get(pipeline),
                           "idle_daemon": idle and {"cpu": idle["daemon"]["cpu"], "rss_mb": idle["daemon"]["rss_mb"],
                                                    "loop_lag_p99_ms": idle["loop_lag"]["p99_ms"],
                                                    "machine_busy": idle["cpu_other"]["machine_busy"]}}
    if not within:
        return out | {"max_rooms_within_budget": None}
    best = max(within, key=lambda s: s["rooms"])
    d, n = best["daemon"], best["rooms"]
    rss_growth = d["rss_mb"] - (idle["daemon"]["rss_mb"] if idle else 0)
    return out | {
        "max_rooms_within_budget": n,
        "max_rooms_is_largest_step": best is steps[-1] and bench.stopped.get(pipeline) is None,
        "daemon_cpu": d["cpu"], "daemon_cpu_main_thread": d["cpu_main_thread"],
        "rooms_per_core": round(n / d["cpu"], 1) if d["cpu"] else None,
        "rooms_per_core_main_thread": round(n / d["cpu_main_thread"], 1) if d["cpu_main_thread"] else None,
        "cpu_per_room": round(d["cpu"] / n, 4),
        "record_latency_p99_ms": best["record_latency"]["p99_ms"],
        "caller_to_stream_p99_ms": best["caller_to_stream"]["p99_ms"],
        "loop_lag_p99_ms": best["loop_lag"]["p99_ms"],
        "rss_per_room_mb": round(rss_growth / n, 2),
    }


def nearest_step(bench: Bench, pipeline: str, rooms: int) -> dict[str, Any] | None:
    """The measured step of ``pipeline`` whose room count is nearest ``rooms`` (the smaller on a tie)."""
    steps = [s for s in bench.steps if s["pipeline"] == pipeline]
    return min(steps, key=lambda s: (abs(s["rooms"] - rooms), s["rooms"])) if steps else None


def step_vs_baseline(step: dict[str, Any], idle: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Ours at one step against the baseline, per room: whatever the loop lag was (a like-for-like count)."""
    n, d = step["rooms"], step["daemon"]
    rss = (d["rss_mb"] - idle["daemon"]["rss_mb"]) / n
    return {"rooms": n, "baseline_processes": b["processes"], "ours_cpu_per_room": round(d["cpu"] / n, 4),
            "ours_cpu_main_thread_per_room": round(d["cpu_main_thread"] / n, 4), "ours_rss_per_room_mb": round(rss, 2),
            "cpu_per_room": ratio(d["cpu"] / n, b["cpu_per_room"]),
            "cpu_main_thread_per_room": ratio(d["cpu_main_thread"] / n, b["cpu_main_thread_per_room"]),
            "rss_per_room": ratio(rss, b["rss_per_room_mb"]),
            "rss_per_room_vs_baseline_pss": ratio(rss, b["pss_per_room_mb"]),
            "ours_loop_lag_p99_ms": step["loop_lag"]["p99_ms"]}


def report(bench: Bench, args: argparse.Namespace, env: dict[str, Any], baseline: dict[str, Any],
           started: float) -> dict[str, Any]:
    results = {p: pipeline_result(bench, p) for p in PIPELINES if p in bench.idle}
    ratios: dict[str, Any] = {}
    for p, r in results.items():
        b = baseline.get(p)
        if not b:
            continue
        ratios[p] = {}
        if r.get("cpu_per_room") is not None:
            ratios[p]["at_max_rooms_within_budget"] = {
                "rooms": r["max_rooms_within_budget"], "cpu_per_room": ratio(r["cpu_per_room"], b["cpu_per_room"]),
                "rss_per_room": ratio(r["rss_per_room_mb"], b["rss_per_room_mb"]),
                "rss_per_room_vs_baseline_pss": ratio(r["rss_per_room_mb"], b["pss_per_room_mb"])}
        near = nearest_step(bench, p, b["processes"])
        if near is not None:
            ratios[p]["at_nearest_room_count"] = step_vs_baseline(near, bench.idle[p], b)
    notes = [
        (f"budget: daemon loop lag p99 <= {BUDGET_S * 1000:g} ms; stepping stops when it is over "
         f"{STOP_FACTOR:g} x budget in two steps in a row"),
        ("cpu figures are cores (1.0 = one core busy for the whole window), from /proc/<pid>/stat utime+stime; "
         "cpu_main_thread from /proc/<pid>/task/<pid>/stat (the asyncio loop; 1.0 is its ceiling)"),
        ("rss_per_room (ours) = (daemon RSS at max_rooms_within_budget - idle daemon RSS) / rooms; baseline: the "
         "processes' RSS (and PSS) / processes"),
        ("ours_vs_baseline: ours / baseline per room (below 1: ours costs less), at max_rooms_within_budget and at "
         "the measured step nearest the baseline's process count (whatever its loop lag)"),
        ("record latency: record ts (set by the daemon) -> this bench's XREAD BLOCK reply; caller_to_stream: the "
         "send time in the caller's data message -> the same; both on one machine's clock"),
        ("baseline: one plain pipecat LiveKitTransport process per room, same processors as the built-in pipeline, "
         "transport.audio.AudioFormat().params(audio_in=True), stock asyncio; it does not record to Redis "
         "(data_to_handler: send time -> its on_data_received handler)"),
        (f"callers: rooms_callers.py processes, tone at {args.sample_rate} Hz in {args.frame_ms} ms frames, one "
         "data message per second, not subscribed to the bot's audio"),
        ("the first room of each pipeline is requested with `room-supervisor join`, the rest with "
         "supervisor.control.Control.join (what that command calls)"),
        (f"callers run at nice {args.caller_nice} (in production they are not on the daemon's host); "
         "callers.audio_realtime says whether they kept up; LiveKit and Redis run at normal priority"),
        ("the bench daemons run with admission by load off (daemon.load_threshold = 100, when the setting "
         "exists) and max_rooms above the largest step: the bench decides how many rooms, not the daemon"),
        ("cpu_other.not_ours = the whole machine's busy CPU minus the daemon, callers, LiveKit, Redis and this "
         "bench: other work sharing the machine; loop lag and latencies suffer when the machine is saturated"),
        *bench.notes,
    ]
    if "metrics" in bench.lag_sources:
        notes.append("loop lag: the daemon's heartbeat had no loop_lag_p99 in some steps; those use the /metrics "
                     f"gauge {LAG_METRIC} (a 10 s maximum) instead, see each step's loop_lag.source")
    problems = bench.problems + [f"caller: {e}" for e in bench.callers.errors[:5]] + \
        [f"reader: {e}" for e in bench.reader.errors[:3]]
    return {
        "bench": "rooms", "quick": args.quick, **env, "sealed_netns": bench.stack.netns is not None,
        "seconds": round(time.monotonic() - started, 1),
        "config": {"listen_steps": args.listen_steps, "echo_steps": args.echo_steps, "window_s": args.window,
                   "settle_s": args.settle, "baseline_processes": args.baseline, "caller_processes": args.callers,
                   "budget_loop_lag_p99_ms": BUDGET_S * 1000},
        "results": results, "baseline": baseline, "ours_vs_baseline": ratios,
        "steps": bench.steps, "data_check": bench.data_check,
        "pass": not problems, "problems": problems[:20], "notes": notes,
    }
