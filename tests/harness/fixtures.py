"""pytest fixtures of the harness; ``tests/conftest.py`` re-exports them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from . import netns as netns_mod
from .livekit_server import LiveKitServer, livekit_binary
from .participant import Participant
from .redis_cluster import RedisCluster
from .redis_server import RedisServer
from .tasks import _rs_no_leaked_tasks, _rs_task_guard  # noqa: F401 - fixtures
from supervisor.devstack.stack import sealed_mode

# Servers alive in the current test, whose log tails go into a failing test's report.
ACTIVE_LIVEKIT: list[LiveKitServer] = []
ACTIVE_REDIS: list[RedisServer] = []


@contextlib.contextmanager
def running(server, active: list):
    """Start ``server``, list it for failure reports, and always stop it."""
    active.append(server)
    try:
        yield server.start()
    finally:
        server.stop()
        active.remove(server)


# ----- redis -----
@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    with running(RedisServer(tmp_path_factory.mktemp("redis")), ACTIVE_REDIS) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared server, emptied for this test (restarted first if an earlier test left it down)."""
    redis_server.start()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> Iterator[RedisCluster]:
    """A real Redis Cluster: 3 masters, 3 replicas, failover within seconds (supervisor.devstack.redis_cluster)."""
    with running(RedisCluster(tmp_path_factory.mktemp("redis-cluster")), ACTIVE_REDIS) as cluster:
        yield cluster


@pytest.fixture
def private_cluster(tmp_path) -> Iterator[RedisCluster]:
    """A cluster of this test's own (3 masters, 3 replicas, appendonly), which it may kill nodes of."""
    with running(RedisCluster(tmp_path / "private-cluster"), ACTIVE_REDIS) as cluster:
        yield cluster


@pytest.fixture(params=["single", "cluster"])
def store_url(request) -> str:
    """For tests that must hold on both kinds of Redis: the shared redis-server, then the 3-master cluster, each
    emptied for the test. A module runs all its tests on both with ``redis_url = both_redis_url`` (below)."""
    if request.param == "single":
        server = request.getfixturevalue("redis_server")
    else:
        server = request.getfixturevalue("redis_cluster")
    server.start()  # restarted if an earlier test left it down
    server.flushall()
    return server.url


@pytest.fixture(name="redis_url")
def both_redis_url(store_url: str) -> str:
    """Imported by a test module as ``from harness.fixtures import both_redis_url``: its ``redis_url`` is then
    the single server and the cluster in turn."""
    return store_url


@pytest.fixture
async def clients():
    """``make(url, **kw)`` -> a Redis client (``eventstore.connection.connect``, 1 s connect timeout); all are
    closed after the test."""
    from eventstore.connection import connect

    made = []

    def make(url: str, **kw):
        made.append(connect(url, connect_timeout=1.0, **kw))
        return made[-1]

    yield make
    for c in made:
        await c.aclose()


@pytest.fixture
def fresh_redis(tmp_path) -> Iterator[RedisServer]:
    """A private redis-server (appendonly, fsync always) this test may kill and restart."""
    with running(RedisServer(tmp_path / "fresh-redis", appendonly=True), ACTIVE_REDIS) as server:
        yield server


# ----- livekit -----
@pytest.fixture(scope="session")
def sealed_netns() -> Iterator[netns_mod.NetNamespace | None]:
    """The namespace LiveKit lives in (None when not root: LiveKit then runs on 127.0.0.1)."""
    if not sealed_mode():
        yield None
        return
    netns_mod.cleanup_stale()
    ns = netns_mod.NetNamespace().create()
    try:
        yield ns
    finally:
        ns.destroy()


@pytest.fixture(scope="session")
def livekit_server(tmp_path_factory, sealed_netns) -> Iterator[LiveKitServer]:
    livekit_binary()  # fail early and clearly when the binary is missing
    with running(LiveKitServer(tmp_path_factory.mktemp("livekit"), sealed_netns), ACTIVE_LIVEKIT) as server:
        yield server


@pytest.fixture
def fresh_livekit(tmp_path, sealed_netns) -> Iterator[LiveKitServer]:
    """A private livekit-server (own ports, same namespace) this test may stop, kill and restart."""
    with running(LiveKitServer(tmp_path / "fresh-livekit", sealed_netns), ACTIVE_LIVEKIT) as server:
        yield server


@pytest.fixture
def room_name(request) -> str:
    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}".replace("[", "-").replace("]", "")


@pytest.fixture
async def participant_factory(livekit_server, room_name) -> AsyncIterator:
    """``await make(identity, url=..., room=...)`` -> a joined :class:`Participant`; all leave at teardown."""
    made: list[Participant] = []

    async def make(identity: str, *, url: str | None = None, room: str | None = None) -> Participant:
        p = Participant(url or livekit_server.url, room or room_name, identity)
        made.append(p)
        return await p.join()

    try:
        yield make
    finally:
        for p in made:
            await p.leave()


@pytest.fixture
async def bot_factory(livekit_server, room_name) -> AsyncIterator:
    """``await make(identity)`` -> a started :class:`EchoBot`; all are stopped at teardown."""
    from .bot import EchoBot  # imports pipecat: only after pytest_configure set the warning filters

    made: list[EchoBot] = []

    async def make(identity: str = "echo-bot", *, url: str | None = None, room: str | None = None) -> EchoBot:
        bot = EchoBot(url or livekit_server.url, room or room_name, identity)
        made.append(bot)
        return await bot.start()

    try:
        yield make
    finally:
        for bot in made:
            await bot.stop()


@pytest.fixture
async def make_bot(redis_url, livekit_server, room_name):
    """``await make_bot(pipeline="handlers", start=True, **spec)``: BotSessions in ``room_name``, closed after."""
    from botsession import BotSession

    made: list = []

    async def make(pipeline: str = "handlers", *, start: bool = True, **spec):
        bot = BotSession(redis_url, livekit_server.url, room_name, pipeline, **spec)
        made.append(bot)
        return await bot.start() if start else bot

    try:
        yield make
    finally:
        for bot in made:
            await bot.aclose()


@pytest.fixture
async def bot(redis_url, livekit_server, room_name):
    """A started BotSession (tests/botsession.py) in ``room_name``; closed after the test."""
    from botsession import BotSession

    session = BotSession(redis_url, livekit_server.url, room_name)
    try:
        yield await session.start()
    finally:
        await session.aclose()
