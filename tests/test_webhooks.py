"""LiveKit webhooks recorded as the server's view of a room.

First the receiving end on its own (the daemon's HTTP endpoint and webhook sink, in this process, with a real
redis-server): a signed event is recorded once however often it is sent; a bad signature, a body that is not the
one signed, garbage HTTP and garbage bodies are refused and record nothing; a Redis that does not answer gets 503
(LiveKit retries) and the retry is recorded. Then a real livekit-server posting to a real daemon: a listener who
joins and leaves within a second (the bot never hears of them) is in the participant tracker's history, and a
replay from zero gives the same state.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid

import pytest
from google.protobuf.json_format import MessageToJson
from livekit import api as lkapi
from livekit.protocol import models
from livekit.protocol.webhook import WebhookEvent

from eventstore.archive import DirectoryArchive
from eventstore.connection import connect
from eventstore.keys import Keys
from eventstore.reader import RoomReader
from eventstore.retention import Archiver
from eventstore.records import LkParticipantJoined, LkParticipantLeft, ServerRecord
from harness.livekit_server import API_KEY, API_SECRET
from harness.util import async_wait_until
from supervisor.control import Control
from supervisor.daemon.archived import ArchivedSeqs
from supervisor.daemon.health import Health
from supervisor.daemon.http import HttpEndpoint
from supervisor.daemon.metrics import DaemonMetrics
from supervisor.daemon.webhooks import WebhookSink
from supervisor.settings import load_settings

PATH = "/livekit/webhook"


def event(room: str, kind: str = "participant_joined", *, identity: str = "visitor", sid: str = "PA_visitor",
          event_id: str | None = None) -> WebhookEvent:
    ev = WebhookEvent(event=kind, id=event_id or f"EV_{uuid.uuid4().hex[:12]}", created_at=int(time.time()),
                      room=models.Room(name=room, sid="RM_test"))
    if kind.startswith("participant") or kind.startswith("track"):
        ev.participant.CopyFrom(models.ParticipantInfo(identity=identity, sid=sid, joined_at=int(time.time()),
                                                       kind=models.ParticipantInfo.Kind.STANDARD))
    if kind == "participant_left":
        ev.participant.disconnect_reason = models.DisconnectReason.CLIENT_INITIATED
    if kind.startswith("track"):
        ev.track.CopyFrom(models.TrackInfo(sid="TR_x", type=models.TrackType.AUDIO,
                                           source=models.TrackSource.MICROPHONE))
    return ev


def sign(body: bytes, key: str = API_KEY, secret: str = API_SECRET) -> str:
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return lkapi.AccessToken(key, secret).with_sha256(digest).to_jwt()


class Endpoint:
    """The daemon's HTTP endpoint and webhook sink, in this process, on 127.0.0.1."""

    def __init__(self, redis_url: str, retention: dict | None = None, **webhooks) -> None:
        self.settings = load_settings(environ={"REDIS_URL": redis_url, "LIVEKIT_API_KEY": API_KEY,
                                               "LIVEKIT_API_SECRET": API_SECRET},
                                      overrides={"webhooks": {"enabled": True, **webhooks},
                                                 "retention": retention or {}})
        self.redis = connect(redis_url)
        self.metrics = DaemonMetrics()
        archived = ArchivedSeqs(self.redis, Keys(), lambda: self.settings, "test-daemon")
        self.sink = WebhookSink(self.redis, Keys(), lambda: self.settings, "test-daemon", self.metrics,
                                archived.restore)
        self.http = HttpEndpoint("127.0.0.1", 0, self._health, self.metrics.render, self.sink.routes)

    @staticmethod
    async def _health() -> Health:
        return Health(True)

    async def __aenter__(self) -> Endpoint:
        await self.http.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self.redis.aclose()

    async def raw(self, request: bytes) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.http.port)
        try:
            writer.write(request)
            await writer.drain()
            reply = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), body

    async def post(self, body: bytes, auth: str | None, path: str = PATH, extra: bytes = b"") -> tuple[int, bytes]:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/webhook+json\r\n"
        if auth is not None:
            head += f"Authorization: {auth}\r\n"
        return await self.raw(head.encode() + extra + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    async def send(self, ev: WebhookEvent, **kw) -> tuple[int, bytes]:
        body = MessageToJson(ev).encode()
        return await self.post(body, sign(body), **kw)

    async def server_records(self, room: str) -> list[ServerRecord]:
        return [r for r in await RoomReader(self.redis, Keys()).read(room) if isinstance(r, ServerRecord)]

    def count(self, outcome: str) -> float:
        return self.metrics.webhooks.labels(outcome)._value.get()


async def test_a_signed_event_is_recorded_once_however_often_it_comes(redis_url):
    room = f"hook-{uuid.uuid4().hex[:8]}"
    async with Endpoint(redis_url) as ep:
        await Control(ep.redis, Keys()).join(room, "listen")
        joined = event(room, event_id="EV_once")
        for _ in range(3):  # LiveKit re-sends an event it got no 2xx for, with the same id
            assert (await ep.send(joined))[0] == 200
        assert (await ep.send(event(room, "participant_left", event_id="EV_left")))[0] == 200
        records = await ep.server_records(room)
        assert [type(r) for r in records] == [LkParticipantJoined, LkParticipantLeft], records
        first = records[0]
        assert (first.event_id, first.participant_id, first.participant_sid, first.kind, first.room_sid) == (
            "EV_once", "visitor", "PA_visitor", "standard", "RM_test")
        assert first.session == "" and first.producer == "test-daemon" and first.server_ts > 0
        assert records[1].reason == "CLIENT_INITIATED"
        assert (ep.count("recorded"), ep.count("duplicate")) == (2, 2)


async def test_bad_signatures_and_garbage_record_nothing(redis_url):
    room = f"hook-{uuid.uuid4().hex[:8]}"
    async with Endpoint(redis_url) as ep:
        await Control(ep.redis, Keys()).join(room, "listen")
        body = MessageToJson(event(room)).encode()
        other = MessageToJson(event(room, identity="someone-else")).encode()
        refused = {
            "no signature": await ep.post(body, None),
            "another secret": await ep.post(body, sign(body, secret="not-the-secret-of-this-server-at-all-0123456789")),
            "another key": await ep.post(body, sign(body, key="otherkey")),
            "signature of another body": await ep.post(body, sign(other)),
            "not a JWT": await ep.post(body, "Bearer garbage.garbage.garbage"),
        }
        assert {why: status for why, (status, _) in refused.items()} == dict.fromkeys(refused, 401)
        garbage = b"\xff\xfe not json at all"
        answers = {
            "signed garbage": (await ep.post(garbage, sign(garbage)))[0],
            "signed JSON of the wrong shape": (await ep.post(b'{"event": 5}', sign(b'{"event": 5}')))[0],
            "no Content-Length": (await ep.raw(f"POST {PATH} HTTP/1.1\r\n\r\n".encode()))[0],
            "chunked": (await ep.raw(f"POST {PATH} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                                     .encode()))[0],
            "huge": (await ep.raw(f"POST {PATH} HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n".encode()))[0],
            "bad length": (await ep.raw(f"POST {PATH} HTTP/1.1\r\nContent-Length: -5\r\n\r\n".encode()))[0],
            "bad header": (await ep.raw(f"POST {PATH} HTTP/1.1\r\nno colon here\r\n\r\n".encode()))[0],
            "short body": (await ep.raw(f"POST {PATH} HTTP/1.1\r\nContent-Length: 50\r\n\r\nabc".encode()))[0],
            "other path": (await ep.post(body, sign(body), path="/elsewhere"))[0],
            "not HTTP": (await ep.raw(b"\x00\x01\x02 hello\r\n\r\n"))[0],
            "control characters in the room name": (await ep.send(event("bad\nname")))[0],
        }
        assert answers == {"signed garbage": 400, "signed JSON of the wrong shape": 400, "no Content-Length": 411,
                           "chunked": 411, "huge": 413, "bad length": 400, "bad header": 400, "short body": 400,
                           "other path": 404, "not HTTP": 400, "control characters in the room name": 400}
        assert await ep.server_records(room) == []
        assert not await ep.redis.exists(Keys().events("bad\nname"))
        # and the endpoint still serves
        assert (await ep.send(event(room)))[0] == 200
        assert len(await ep.server_records(room)) == 1


async def test_unsupervised_rooms_and_other_events_are_acknowledged_not_recorded(redis_url):
    room = f"hook-{uuid.uuid4().hex[:8]}"
    async with Endpoint(redis_url) as ep:
        egress = WebhookEvent(event="egress_started", id="EV_egress", created_at=int(time.time()))
        assert (await ep.send(egress))[0] == 200
        assert (await ep.send(event(room)))[0] == 200  # nobody asked for this room
        assert not await ep.redis.exists(Keys().events(room))
        assert ep.count("ignored") == 2
    async with Endpoint(redis_url, rooms="all") as ep:
        assert (await ep.send(event(room)))[0] == 200
        assert len(await ep.server_records(room)) == 1
    from daemonproc import run_cli

    listed = await asyncio.to_thread(run_cli, "rooms", "--redis-url", redis_url)
    line = next(line for line in listed.stdout.splitlines() if line.startswith(repr(room)))
    assert line.split()[1:4] == ["-", "-", "webhook"], line  # nobody asked for it: only LiveKit's view is recorded


async def test_redis_down_answers_503_and_the_retry_is_recorded(fresh_redis):
    room = f"hook-{uuid.uuid4().hex[:8]}"
    async with Endpoint(fresh_redis.url, rooms="all") as ep:
        ev = event(room, event_id="EV_retry")
        fresh_redis.stop()
        status, _ = await ep.send(ev)
        assert status == 503  # LiveKit retries 5xx
        fresh_redis.start()
        await async_wait_until(lambda: _status_is(ep, ev, 200), 30, "the retry recorded", 0.2)
        assert (await ep.send(ev))[0] == 200
        assert [r.event_id for r in await ep.server_records(room)] == ["EV_retry"]


async def _status_is(ep: Endpoint, ev: WebhookEvent, status: int) -> bool:
    return (await ep.send(ev))[0] == status


async def test_a_room_back_after_its_tombstone_expired_continues_its_seqs(redis_url, tmp_path):
    """A room archived so long ago that its tombstone expired: its next webhook takes the archive's last seq back
    first (the daemon does the same before a session), so that it continues at seq + 1."""
    room = f"back-{uuid.uuid4().hex[:8]}"
    archive = DirectoryArchive(tmp_path / "archive")
    async with Endpoint(redis_url, retention={"archive_dir": str(tmp_path / "archive")}, rooms="all") as ep:
        for kind in ("participant_joined", "participant_left"):
            assert (await ep.send(event(room, kind)))[0] == 200
        archiver = Archiver(ep.redis, archive, projections=(), archive_after=0, tombstone_ttl=0.2)
        assert (await archiver.run_pass()).archived == [room]
        await async_wait_until(lambda: _gone(ep.redis, Keys().archived(room)), 30, "the tombstone expired")
        assert (await ep.send(event(room, "participant_joined", identity="later", sid="PA_later")))[0] == 200
        records = await RoomReader(ep.redis, Keys(), archive=archive).read(room)
        assert [r.seq for r in records] == [1, 2, 3]
        assert records[-1].participant_id == "later"


async def _gone(redis, key: str) -> bool:
    return not await redis.exists(key)


@pytest.mark.livekit
@pytest.mark.timeout(300)
async def test_a_listener_the_bot_never_saw_is_in_the_history(tmp_path, redis_url, sealed_netns):
    """LiveKit posts its webhooks to the daemon (over loopback, or from its namespace to our end of the veth): a
    non-publisher who joins and leaves within a second is in the participant tracker's server view, which the
    bot's view lacks; consumers and a replay from zero agree."""
    import json

    from daemonproc import DaemonProcess, observing, run_cli
    from harness.participant import Participant
    from supervisor.devstack.livekit_server import LiveKitServer
    from supervisor.devstack.util import free_port

    import ipaddress

    host = sealed_netns.host_ip if sealed_netns is not None else "127.0.0.1"
    allowed = sealed_netns.subnet if sealed_netns is not None else ipaddress.ip_network("127.0.0.0/8")
    assert ipaddress.ip_address(host) in allowed  # the seal: LiveKit posts only to loopback or our veth's end
    port = free_port(host)
    hook_url = f"http://{host}:{port}{PATH}"
    server = LiveKitServer(tmp_path / "livekit", sealed_netns,
                           extra_config={"webhook": {"api_key": API_KEY, "urls": [hook_url]}}).start()
    room = f"visit-{uuid.uuid4().hex[:8]}"
    daemon = DaemonProcess(tmp_path / "daemon", redis_url, server.url, http_host=host, http_port=port,
                           sections={"webhooks": {"enabled": True}})
    try:
        async with observing(daemon) as observer:
            assert run_cli("join", room, "--pipeline", "listen", config=daemon.config).returncode == 0
            daemon.start()
            await observer.wait_connected([room], timeout=60)
            visitor = Participant(server.url, room, "visitor")
            await visitor.join()
            await asyncio.sleep(0.3)  # a listener's visit, shorter than LiveKit's 3 s batching of their updates
            await visitor.leave()
            await async_wait_until(lambda: _server_saw_leave(observer, room, "visitor"), 60,
                                   "LiveKit's participant_left webhook recorded", 0.2)
            consumed = run_cli("consume", "participants", "--until-caught-up", config=daemon.config)
            assert consumed.returncode == 0, consumed.stderr
            shown = run_cli("state", room, "--projection", "participants", config=daemon.config)
            assert shown.returncode == 0, shown.stderr
            state = json.loads(shown.stdout[shown.stdout.index("{"):])
            visits = {v["identity"]: v for v in state["server"]["visits"].values()}
            assert visits["visitor"]["left_at"] and visits["visitor"]["kind"] == "standard", visits
            assert any(v["kind"] == "agent" for v in visits.values()), visits  # the bot, as the server saw it
            checked = run_cli("state", room, "--check", "--projection", "participants", config=daemon.config)
            assert checked.returncode == 0 and "same at seq" in checked.stdout, checked.stdout + checked.stderr
            seen_by_bot = "visitor" in state["people"]
            print(f"\nthe bot {'also saw' if seen_by_bot else 'never saw'} the visitor; the server view has them")
            await daemon.sigterm_exits(0)
    finally:
        server.stop()


async def _server_saw_leave(observer, room: str, identity: str) -> bool:
    return any(isinstance(r, LkParticipantLeft) and r.participant_id == identity
               for r in await observer.records(room))
