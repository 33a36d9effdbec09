"""LiveKit's webhooks, recorded: the server's own view of each room, beside the bot's.

LiveKit POSTs each webhook to ``webhooks.path`` on the daemon's HTTP endpoint (point ``webhook.urls`` of
livekit.yaml at any daemon: each one can record any room). :class:`WebhookSink`:

- refuses a webhook not signed by the configured key, or whose body is not the one signed: 401, nothing recorded
  (LiveKit does not retry a 4xx); a signed body that is not a webhook event: 400;
- records a room event (``room_started``, ``room_finished``, ``participant_joined``, ``participant_left``,
  ``participant_connection_aborted``, ``track_published``, ``track_unpublished``) as its ``lk_*`` record in the
  room's stream, exactly once per event id (:class:`eventstore.once.OnceAppender`: LiveKit re-sends a webhook it got
  no 2xx for, with the same id), and answers 200 once the record is in Redis; 200 also for events it does not record
  (egress and ingress events, rooms not supervised: ``webhooks.rooms``);
- answers 503 while Redis does not take the record: LiveKit retries 4 times over ~15 s, then drops the event (its
  queue also drops events older than 30 s): a webhook can be lost in a Redis outage; the bot's own records cannot.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import redis.asyncio as aioredis

from eventstore.keys import Keys
from eventstore.once import OnceAppender, OnceAppendError
from transport.webhooks import BadWebhook, WebhookRefused, server_record, verify_webhook

from ..control import check_room_name, shown
from ..errors import REDIS_TROUBLE, InvalidRoomName
from ..settings import Settings
from .metrics import DaemonMetrics

log = logging.getLogger("supervisor")


class WebhookSink:
    def __init__(self, redis: aioredis.Redis, keys: Keys, settings: Callable[[], Settings], producer: str,
                 metrics: DaemonMetrics, restore_seq: Callable[[str], Awaitable[int]] | None = None) -> None:
        self._redis = redis
        self._restore_seq = restore_seq  # an archived room whose tombstone expired continues its seqs
        self.keys = keys
        self._settings = settings
        self.producer = producer
        self._metrics = metrics
        s = settings()
        self._appender = OnceAppender(redis, keys, stream_maxlen=s.redis.stream_maxlen)

    def routes(self) -> dict[str, Callable]:
        """For the HTTP endpoint: the webhook path -> this sink, while webhooks are enabled."""
        hooks = self._settings().webhooks
        return {hooks.path: self.handle} if hooks.enabled else {}

    def _count(self, outcome: str) -> None:
        self._metrics.webhooks.labels(outcome).inc()

    async def handle(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        s = self._settings()
        key = s.webhooks.api_key or s.livekit.api_key
        secret = s.webhooks.api_secret or s.livekit.api_secret
        try:
            event = verify_webhook(body, headers.get("authorization", ""), key, secret)
        except WebhookRefused as exc:
            self._count("refused")
            log.warning("daemon %s: webhook refused: %s", self.producer, exc)
            return 401, b"not signed by our key\n"
        except BadWebhook as exc:
            self._count("malformed")
            log.warning("daemon %s: webhook refused: %s", self.producer, exc)
            return 400, b"not a LiveKit webhook event\n"
        record = server_record(event, self.producer)
        if record is None:
            self._count("ignored")
            return 200, b"not a room event; not recorded\n"
        try:
            check_room_name(record.room)
        except InvalidRoomName as exc:
            self._count("malformed")
            log.warning("daemon %s: webhook %s names no usable room: %s", self.producer, event.id, exc)
            return 400, b"no usable room name\n"
        try:
            if s.webhooks.rooms == "supervised" and not await self._supervised(record.room):
                self._count("ignored")
                return 200, b"room not supervised; not recorded\n"
            if self._restore_seq is not None:
                await self._restore_seq(record.room)
            result = await self._appender.append(record, event.id)
        except (OnceAppendError, *REDIS_TROUBLE) as exc:
            self._count("unavailable")
            log.warning("daemon %s: room=%s: webhook %s (%s) not recorded yet, LiveKit will retry: %s",
                        self.producer, shown(record.room), event.id, event.event, exc)
            return 503, b"event store unavailable; retry\n"
        self._count("recorded" if result.written else "duplicate")
        log.debug("daemon %s: room=%s: webhook %s %s at seq %d%s", self.producer, shown(record.room), event.event,
                  event.id, result.seq, "" if result.written else " (already recorded)")
        return 200, b"recorded\n"

    async def _supervised(self, room: str) -> bool:
        """The room is desired, or has a stream (a bot was there, or its webhooks were recorded before)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hexists(self.keys.desired(), room)
        pipe.exists(self.keys.events(room))
        desired, exists = await pipe.execute()
        return bool(desired) or bool(exists)
