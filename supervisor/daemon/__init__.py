"""The daemon (``room-supervisor serve``): reconciles desired rooms into room sessions, one uvloop process for many
rooms. The CLI imports this package; nothing here imports the CLI: :meth:`Daemon.run` returns an exit code.

Life of a daemon (``room-supervisor serve``):

1. lock its spool, start the HTTP endpoint;
2. wait until Redis and LiveKit answer; replay the spools of daemons that are gone, start the EventWriter and
   wait until its own spool (left by an earlier run) is in Redis, each within ``drain_timeout``: spooled
   records carry the epochs of their time, which a room refuses once claimed again; then ``READY=1``;
3. reconcile every ``reconcile_interval`` seconds, and at once when a control command arrives: stop sessions
   of rooms no longer desired, restart those whose pipeline changed, claim leases of desired rooms that are
   due (up to ``max_rooms``) and start a RoomSession for each (:mod:`supervisor.daemon.reconcile`); renew every held
   lease in one round trip and ride out Redis outages (:mod:`supervisor.daemon.lease_keeper`); heartbeat its state to
   ``rs:daemon:<id>``. The id is stable across restarts (``daemon.id``, default: the host name), so a
   restarted daemon takes its own rooms back at once instead of waiting for their leases to expire. With
   ``[dispatch] enabled`` it is also a LiveKit agent worker: rooms LiveKit dispatches to it become desired and
   held at once (:mod:`supervisor.daemon.worker`, :mod:`supervisor.daemon.jobs`); with ``[webhooks] enabled`` it
   records LiveKit's webhooks in the rooms' streams (:mod:`supervisor.daemon.webhooks`);
4. on the first SIGTERM, drain: ``STOPPING=1``, every session leaves gracefully (``on_before_disconnect``),
   LiveKit is asked until it no longer lists the bot (a lingering bot is removed), leases are released, the
   writer flushes, all within ``drain_timeout``; exit 0 if everything ended in time and every bot is gone.
   A second SIGTERM, or SIGINT, exits at once (about a second: sessions are cancelled, the writer gets a last
   moment, what is not in Redis stays in the spool; exit 1). SIGHUP reloads the settings.

Signal handlers only set state; all work happens in tasks.

Where things are:

- ``lifecycle``: :class:`Daemon`: start, ready, signals (they only set events), drain, ``aclose``; ``reports``:
  its status line, heartbeat and watchdog pings;
- ``shutdown``: the bounds of a drain and a forced exit, and waiting for sessions within them;
- ``reconcile``: desired state -> claims and room sessions; ``leases`` (Redis scripts) and ``lease_keeper``
  (renewals, outages);
- ``session``: :class:`RoomSession`, one room from claim to release; ``bots``: our bots as LiveKit lists them
  (leftovers removed, departures confirmed, missing bots noticed);
- ``registry``, ``loops``: the sessions a daemon holds, and its long-running loops kept alive;
- ``recovery``: the spool lock and the replay of spools left by earlier runs;
- ``worker``, ``jobs``: the LiveKit agent worker protocol, and taking (and ending) the jobs it is given;
- ``http``, ``webhooks``: the HTTP endpoint, and LiveKit's webhooks received there;
- ``health``, ``metrics``, ``notify``: ``/healthz`` and ``/metrics``, Prometheus metrics, systemd's sd_notify;
- ``load``: the event loop's load, and how many new rooms it allows.
"""
