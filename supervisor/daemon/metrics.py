"""The daemon's Prometheus metrics, in a private registry (nothing global, two daemons in one test process
never share a counter). Rendered as Prometheus text by ``/metrics``.

Per-room labels are avoided on purpose: rooms come and go and would make the series count unbounded.
"""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

APPEND_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class DaemonMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.rooms_desired = Gauge("room_supervisor_rooms_desired", "Rooms in desired state (all daemons)",
                                   registry=r)
        self.rooms_failed = Gauge("room_supervisor_rooms_failed", "Desired rooms marked failed", registry=r)
        self.desired_reads = Counter("room_supervisor_desired_full_reads", "Reads of the whole desired state "
                                     "(periodic, and soon after control commands)", registry=r)
        self.sessions = Gauge("room_supervisor_sessions", "Room sessions held by this daemon, by state",
                              ["state"], registry=r)
        self.events_written = Counter("room_supervisor_events_written", "Records appended to Redis",
                                      registry=r)
        self.append_latency = Histogram(
            "room_supervisor_append_latency_seconds",
            "Time from EventWriter.append to the record being in Redis (oldest record of each batch)",
            buckets=APPEND_LATENCY_BUCKETS, registry=r,
        )
        self.rejoins = Counter("room_supervisor_rejoins", "Sessions started again after one ended, by cause",
                               ["cause"], registry=r)
        self.errors = Counter("room_supervisor_errors", "Errors by kind", ["kind"], registry=r)
        self.dependency_up = Gauge("room_supervisor_dependency_up", "1 when the last probe answered",
                                   ["dependency"], registry=r)
        self.writer_pending = Gauge("room_supervisor_writer_pending", "Records waiting in memory for Redis",
                                    registry=r)
        self.spool_bytes = Gauge("room_supervisor_spool_bytes", "Bytes waiting in the local spool file",
                                 registry=r)
        self.store_down = Gauge("room_supervisor_store_down", "1 while Redis does not answer the lease keeper "
                                "(sessions go on; records wait in memory and the spool)", registry=r)
        self.loop_lag = Gauge("room_supervisor_loop_lag_seconds", "Largest recent event loop lag", registry=r)
        self.loop_lag_p99 = Gauge("room_supervisor_loop_lag_p99_seconds", "99th percentile of the event loop's "
                                  "lag over the last 10 s", registry=r)
        self.loop_cpu = Gauge("room_supervisor_loop_cpu_ratio", "Share of one core the event-loop thread used "
                              "over the last 10 s", registry=r)
        self.load = Gauge("room_supervisor_load", "max(loop CPU, loop lag p99 / 50 ms): new rooms are taken only "
                          "below daemon.load_threshold", registry=r)
        self.declined = Gauge("room_supervisor_rooms_declined", "Due rooms left to other daemons because of load "
                              "(counted at each reconcile pass, since start)", registry=r)
        self.webhooks = Counter("room_supervisor_webhooks", "LiveKit webhooks received, by outcome (recorded, "
                                "duplicate, ignored, refused, malformed, unavailable)", ["outcome"], registry=r)
        self.jobs = Counter("room_supervisor_dispatch_jobs", "LiveKit agent jobs, by outcome (offered, accepted, "
                            "declined, assigned, failed, terminated)", ["outcome"], registry=r)
        self.worker_up = Gauge("room_supervisor_dispatch_registered", "1 while registered with LiveKit as an agent "
                               "worker", registry=r)
        for outcome in ("recorded", "duplicate", "ignored", "refused", "malformed", "unavailable"):
            self.webhooks.labels(outcome)
        for outcome in ("offered", "accepted", "declined", "assigned", "failed", "terminated"):
            self.jobs.labels(outcome)
        for kind in ("pipeline_error", "room_failed", "lease_lost", "redis", "livekit", "internal",
                     "ghost_removed", "ghost_unconfirmed"):
            self.errors.labels(kind)
        for cause in ("rejoin", "restart"):
            self.rejoins.labels(cause)

    def on_written(self, room: str, count: int, first: int, last: int, seconds: float) -> None:
        """The EventWriter's ``on_written`` hook."""
        self.events_written.inc(count)
        self.append_latency.observe(seconds)

    def watch(self, pending: Callable[[], float], spooled: Callable[[], float], loop_lag: Callable[[], float],
              load: Callable[[], Any], declined: Callable[[], float]) -> None:
        """Gauges read when scraped: the writer's queue and spool, the event loop's lag and the load."""
        self.writer_pending.set_function(pending)
        self.spool_bytes.set_function(spooled)
        self.loop_lag.set_function(loop_lag)
        self.loop_lag_p99.set_function(lambda: load().lag_p99)
        self.loop_cpu.set_function(lambda: load().cpu)
        self.load.set_function(lambda: load().load)
        self.declined.set_function(declined)

    def set_sessions(self, counts: dict[str, int]) -> None:
        for state, n in counts.items():
            self.sessions.labels(state).set(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
