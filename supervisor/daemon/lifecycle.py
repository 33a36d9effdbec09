"""Daemon: the life of one ``room-supervisor serve`` process (see :mod:`supervisor.daemon` for the whole story).

Signal handlers only set events; all work happens in tasks. :meth:`Daemon.run` returns the exit code, and the
caller (the CLI) ends the process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import time
import uuid
from typing import Callable

from livekit import api as lkapi

from eventstore.connection import connect
from eventstore.feed import load_partitions
from eventstore.keys import Keys
from eventstore.spool import Spool
from eventstore.writer import EventWriter, RecordsNotWritten

from ..control import Control
from ..errors import REDIS_TROUBLE, CommandError
from ..heartbeat import delete_heartbeat, read_heartbeat, twin
from ..settings import Settings, SettingsError, quiet_routine_noise, reloadable, set_level
from .archived import ArchivedSeqs
from .bots import PresenceCheck
from .health import Probes, check_pipelines
from .http import HttpEndpoint
from .lease_keeper import LeaseKeeper
from .leases import Leases
from .load import LoopMonitor
from .loops import Loops, sleep_unless
from .metrics import DaemonMetrics
from .notify import Notifier
from .reconcile import Reconciler
from .reports import DaemonReports
from .recovery import SpoolUnavailable, flush_unless, own_spool, replay_before_claims
from .registry import SessionRegistry
from .session import STATES, RoomSession, SessionContext, SessionRunner
from .jobs import JobBook, JobTaker
from .webhooks import WebhookSink
from .worker import AgentWorker
from .shutdown import CLOSE_WAIT, FORCED_WAIT, cancel_sessions, remove_bots_now, wait_sessions

log = logging.getLogger("supervisor")

EXIT_DRAINED, EXIT_NOT_DRAINED = 0, 1


class DaemonStartError(CommandError):
    """The daemon cannot start (spool, HTTP port, ...); the message says why."""


class Daemon(DaemonReports):
    def __init__(self, settings: Settings, *, reload: Callable[[], Settings] | None = None,
                 run_session: SessionRunner | None = None, burst: bool = False,
                 environ: dict[str, str] | None = None) -> None:
        self.settings = settings
        # Stable across restarts, so that a restarted daemon takes its own rooms back at once (see leases).
        self.id = settings.daemon.id or socket.gethostname()
        self.instance = uuid.uuid4().hex[:12]
        self.keys = Keys(settings.redis.prefix)
        self.metrics = DaemonMetrics()
        self.notifier = Notifier(environ)
        self.registry: SessionRegistry[RoomSession] = SessionRegistry()
        self.state = "starting"
        self.burst = burst
        self.drain_requested = asyncio.Event()
        self.force_requested = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self._reload = reload
        self._run_session = run_session
        self._wake = asyncio.Event()
        self.loops = Loops(lambda: self.metrics.errors.labels("internal").inc())
        self._reconcile_failing = False
        self._watchdog_silenced = False
        self._started = time.time()
        self._closed = False
        self._last_status = ""
        self._spool_lock = None
        self._twin_checked = False
        self._predecessor = ""  # instance of the earlier run whose heartbeat this one found at start
        self.redis = connect(settings.redis.url, client_name="room-supervisor:" + re.sub(r"[^\w.:/-]", "_", self.id))
        self.control = Control(self.redis, self.keys)
        self.leases = Leases(self.redis, self.keys, f"{self.id}/{self.instance}", settings.daemon.lease_ttl)
        self.archived = ArchivedSeqs(self.redis, self.keys, lambda: self.settings, self.id)
        self.writer: EventWriter | None = None
        self.http: HttpEndpoint | None = None
        self.livekit: lkapi.LiveKitAPI | None = None
        self.monitor = LoopMonitor()
        self.probes: Probes | None = None
        self.reconciler = Reconciler(self.id, self.control, self.leases, self.registry, lambda: self.settings,
                                     self._context, self.drain_requested.is_set, self.monitor.load)
        self.keeper: LeaseKeeper | None = None
        self.jobs = JobBook()
        self.taker = JobTaker(self.id, self.control, self.registry, self.jobs, lambda: self.settings, self.metrics,
                              self.reconciler.room_for_one_more, self.reconciler.start_dispatched)
        self.worker: AgentWorker | None = None

    # --- signals: they only set state ------------------------------------------------------------------------

    def request_drain(self) -> None:
        if self.drain_requested.is_set():
            self.force_requested.set()
        self.drain_requested.set()

    def request_force(self) -> None:
        self.force_requested.set()
        self.drain_requested.set()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.request_drain)
        loop.add_signal_handler(signal.SIGINT, self.request_force)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    # --- life ------------------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until drained; returns the exit code (0: every session ended within the drain bound)."""
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        try:
            await self._start()
            if await self._wait_until_ready():
                self.state = "ready"
                self.notifier.ready(await self._status())
                log.info("daemon %s ready (instance %s)", self.id, self.instance)
                self.loops.start("leases", self.keeper.step)
                if self.livekit is not None:
                    self.loops.start("presence", PresenceCheck(self.registry, self.livekit).step)
                self.loops.start("reconcile", self._reconcile_step)
                self.loops.start("control", lambda: self.reconciler.watch_commands(self._wake))
                if self.settings.dispatch.enabled:
                    self.worker = AgentWorker(lambda: self.settings, self.taker, self.metrics, self.id,
                                              self._fullness, "room-supervisor")
                    self.loops.start("dispatch", self.worker.step)
                await self.drain_requested.wait()
            return EXIT_DRAINED if await self.drain() else EXIT_NOT_DRAINED
        finally:
            self._remove_signals(loop)
            await self.aclose()

    async def _start(self) -> None:
        s = self.settings
        from transport.rtc_logs import native_rtc_logs
        from transport.session import run_session

        self._run_session = self._run_session or run_session
        quiet_routine_noise(s)
        # before any room: the rtc FFI would otherwise queue every trace record of every session for Python
        native_rtc_logs("warn")
        await check_pipelines(s.pipelines, self.id)
        self.monitor.start()
        try:
            spool_path, self._spool_lock = own_spool(s.writer.spool_dir, self.id)
            spool = await Spool.open(spool_path, max_bytes=s.writer.spool_max_bytes, fsync=s.writer.spool_fsync)
        except (SpoolUnavailable, OSError) as exc:
            raise DaemonStartError(str(exc)) from None
        self.writer = EventWriter(
            self.redis, keys=self.keys, producer=self.id, spool=spool, max_batch=s.writer.max_batch,
            max_pending=s.writer.max_pending, max_block=s.writer.max_block, stream_maxlen=s.redis.stream_maxlen,
            on_written=self.metrics.on_written, wait_replicas=s.redis.wait_replicas, wait_timeout=s.redis.wait_timeout,
        )
        writer = self.writer
        self.metrics.watch(lambda: writer.pending, lambda: writer.spooled_bytes, self.monitor.lag, self.monitor.load,
                           lambda: self.reconciler.declined)
        self.livekit = lkapi.LiveKitAPI(s.livekit.url, s.livekit.api_key, s.livekit.api_secret, failover=False)
        self.probes = Probes(self.redis, self.livekit, self.monitor, self.metrics, self.loops.problems)
        if s.daemon.http_port:
            hooks = WebhookSink(self.redis, self.keys, lambda: self.settings, self.id, self.metrics,
                                self.archived.restore)
            self.http = HttpEndpoint(s.daemon.http_host, s.daemon.http_port, self.probes.health, self.metrics.render,
                                     hooks.routes)
            try:
                await self.http.start()
            except OSError as exc:
                raise DaemonStartError(f"cannot listen on {s.daemon.http_host}:{s.daemon.http_port}: {exc}") from None
        self.keeper = LeaseKeeper(self.leases, self.registry, self.metrics, lambda: self.settings.daemon.outage_grace,
                                  self.livekit, self.id)
        self.loops.start("heartbeat", self._heartbeat_step)
        self.loops.start("reload", self._reload_step)
        if self.settings.daemon.watchdog_interval or self.notifier.watchdog_interval:
            self.loops.start("watchdog", self._watchdog_step)
        self._spool_path = spool_path

    async def _wait_until_ready(self) -> bool:
        """Wait until Redis and LiveKit answer and the spools are replayed (False if a drain was asked for
        first)."""
        assert self.probes is not None and self.writer is not None
        said = ""
        while not self.drain_requested.is_set():
            problems = await self.probes.dependencies()
            try:
                if self.probes.redis_ok:
                    problems += await self._twin_problem()
                if not problems:
                    await self._prepare_redis()
                    return not self.drain_requested.is_set()
            except REDIS_TROUBLE as exc:
                problems = [f"redis: {type(exc).__name__}: {exc}"[:300]]
            text = "waiting: " + "; ".join(problems)
            if text != said:
                log.warning("daemon %s %s", self.id, text)
                self.notifier.status(text[:200])
                said = text
            await sleep_unless(self.drain_requested, 1.0)
        return False

    async def _twin_problem(self) -> list[str]:
        """Another running daemon with this id would take this one's rooms and be robbed of them in turn: wait
        while its heartbeat says it is alive. Once this passes, this daemon's heartbeats take over the key."""
        if self._twin_checked:
            return []
        other = await read_heartbeat(self.redis, self.keys, self.id)
        why = twin(other, socket.gethostname(), os.getpid())
        self._twin_checked = not why
        if other is not None and not why:  # an earlier run of this daemon, gone: take its rooms back now
            self._predecessor = other.instance
            self.reconciler.reclaim(sorted(other.rooms))
            log.info("daemon %s: an earlier run (instance %s, pid %d) held %d rooms; taking them back", self.id,
                     other.instance, other.pid, len(other.rooms))
        return [why] if why else []

    async def _prepare_redis(self) -> None:
        s = self.settings
        assert self.writer is not None
        await load_partitions(self.redis, self.keys, s.redis.partitions)
        await replay_before_claims(self.redis, self.keys, self.writer, s.writer.spool_dir, self._spool_path,
                                   s.daemon.drain_timeout, self.drain_requested)

    async def drain(self) -> bool:
        """Stop every session gracefully, release leases, flush the writer, within ``drain_timeout``.
        True if everything ended in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.daemon.drain_timeout
        self.state = "draining"
        sessions = await self.registry.sessions()
        self.notifier.stopping(f"draining {len(sessions)} rooms")
        log.info("daemon %s draining %d rooms (bound %.1fs)", self.id, len(sessions), self.settings.daemon.drain_timeout)
        await self.loops.stop(("reconcile", "control", "dispatch"))  # no new rooms, from us or from LiveKit
        for session in sessions.values():
            session.request_stop("drained")
        reserve = min(2.0, self.settings.daemon.drain_timeout * 0.2)
        left = await wait_sessions(sessions.values(), deadline - reserve - loop.time(), self.force_requested)
        if left:
            log.error("daemon %s: %d sessions did not end in time; cancelled", self.id, len(left))
            await cancel_sessions(left, self.force_requested)
        flushed = not self.forced and (self.writer is None or await flush_unless(
            self.writer, max(0.1, deadline - loop.time()), self.force_requested))
        if self.forced:
            if self.livekit is not None:
                await remove_bots_now(self.livekit, sessions.values(), self.id)
            log.warning("daemon %s: forced exit; the writer gets %.1fs, then what is not in Redis stays in the "
                        "spool", self.id, FORCED_WAIT)
        elif not flushed:
            log.error("daemon %s: writer not flushed in time; the rest goes to the spool", self.id)
        ghosts = sum(1 for s in sessions.values() if s.unconfirmed)
        if ghosts:
            log.error("daemon %s: %d bot(s) could not be confirmed gone from LiveKit", self.id, ghosts)
        clean = not left and flushed and not ghosts
        log.info("daemon %s drained (clean=%s)", self.id, clean)
        return clean

    @property
    def forced(self) -> bool:
        """A second SIGTERM, or SIGINT: every wait from now on is cut to :data:`FORCED_WAIT`."""
        return self.force_requested.is_set()

    async def aclose(self) -> None:
        """Release everything. Safe to call twice, and after a failed start. On a forced exit every step is
        bounded by :data:`FORCED_WAIT`; records not yet in Redis stay in the spool."""
        if self._closed:
            return
        self._closed = True
        wait = FORCED_WAIT if self.forced else CLOSE_WAIT
        await cancel_sessions((await self.registry.sessions()).values(), self.force_requested)
        await self.loops.stop()
        if self.worker is not None:
            await self.worker.aclose()
        if self.monitor.task is not None:
            self.monitor.task.cancel()
            await asyncio.gather(self.monitor.task, return_exceptions=True)
        if self.writer is not None:
            try:
                await self.writer.aclose(timeout=wait)
            except RecordsNotWritten as exc:
                log.error("daemon %s: %s", self.id, exc)
        try:
            await asyncio.wait_for(delete_heartbeat(self.redis, self.keys, self.id, self.instance), wait)
        except REDIS_TROUBLE:
            pass
        if self.http is not None:
            await self.http.aclose()
        if self.livekit is not None:
            await self.livekit.aclose()
        await self.redis.aclose()
        self.notifier.close()
        if self._spool_lock is not None:
            self._spool_lock.release()

    # --- reconcile -------------------------------------------------------------------------------------------

    def _context(self) -> SessionContext:
        assert self.writer is not None and self._run_session is not None
        return SessionContext(self.writer, self.leases, self.control, self.registry, self.metrics, self.id,
                              lambda: self.settings, self._run_session, self.livekit, self.jobs.token_for,
                              self.taker.ended, self.archived.restore)

    async def _fullness(self) -> tuple[bool, float]:
        """For LiveKit's dispatch: (takes no new room now, how full the daemon is: 0..1)."""
        d = self.settings.daemon
        fraction = await self.registry.count() / d.max_rooms
        if d.load_threshold < 1.0:
            fraction = max(fraction, self.monitor.load().load / d.load_threshold)
        return not await self.reconciler.room_for_one_more(), min(1.0, fraction)

    async def _reconcile_step(self) -> None:
        try:
            await self.reconcile_once()
            if self._reconcile_failing:
                log.info("daemon %s: Redis answers again; reconciling", self.id)
            self._reconcile_failing = False
        except REDIS_TROUBLE as exc:
            self.metrics.errors.labels("redis").inc()
            if not self._reconcile_failing:
                log.warning("daemon %s: reconcile failed (%r); retrying", self.id, exc)
            self._reconcile_failing = True
        self._wake.clear()
        await sleep_unless(self._wake, self.settings.daemon.reconcile_interval)

    async def reconcile_once(self) -> None:
        reads = self.reconciler.full_reads
        await self.reconciler.once()
        self.metrics.desired_reads.inc(self.reconciler.full_reads - reads)
        self.metrics.rooms_desired.set(self.reconciler.desired_count)
        self.metrics.rooms_failed.set(self.reconciler.failed_count)
        self.metrics.set_sessions(await self.registry.count_by_state(STATES))
        status = await self._status()
        if status != self._last_status:  # systemd needs no repeats, and a full socket drops messages
            self._last_status = status
            self.notifier.status(status)
        if self.burst and not self.reconciler.desired_count and not await self.registry.count():
            log.info("daemon %s: no desired room left (--burst); draining", self.id)
            self.drain_requested.set()

    async def _reload_step(self) -> None:
        await self.reload_requested.wait()
        self.reload_requested.clear()
        if self._apply_reload():
            await check_pipelines(self.settings.pipelines, self.id)

    def _apply_reload(self) -> bool:
        if self._reload is None:
            return False
        self.notifier.reloading()
        try:
            new = self._reload()
        except SettingsError as exc:
            log.error("daemon %s: reload refused, keeping the old settings: %s", self.id, exc)
            self.notifier.ready()
            return False
        self.settings, later = reloadable(self.settings, new)
        if later:
            log.warning("daemon %s: changes to %s take effect after a restart", self.id, ", ".join(later))
        self.leases.ttl = self.settings.daemon.lease_ttl
        set_level(self.settings.daemon.log_level.upper())
        log.info("daemon %s: settings reloaded", self.id)
        self.notifier.ready()
        self._wake.set()
        return True
