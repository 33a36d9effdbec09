"""Retention with a real redis-server and a real archive directory: ended rooms leave Redis for the archive and
read back the same (records, replayed states, ``events`` lines); a room archived and written again continues its
sequence; rooms still wanted, held, recent or not folded stay; the archiver killed with SIGKILL at random points
loses, duplicates and half-removes nothing."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import uuid

import msgspec
import pytest

from consumer_support import catch_up, random_rooms, write
from eventstore.archive import DirectoryArchive
from eventstore.keys import Keys
from eventstore.reader import RoomReader
from eventstore.records import SessionEnded, SessionStarted
from eventstore.replay import replay, replay_many
from eventstore.retention import Archiver, SequenceRestorer
from harness.util import async_wait_until
from eventstore.projections.callstate import CallStateMachine
from eventstore.projections.participants import ParticipantTracker
from supervisor.cli.events import record_line
from supervisor.control import Control
from harness.fixtures import both_redis_url  # noqa: F401 - every test here runs on one server and on a cluster

pytestmark = [pytest.mark.timeout(300)]

PROJECTIONS = (ParticipantTracker(), CallStateMachine())
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ended(histories: dict) -> dict:
    """Each room's history, ended for good (the call is over)."""
    out = {}
    for room, records in histories.items():
        last = records[-1]
        out[room] = [*records, SessionEnded(room=room, session=last.session, ts=last.ts + 1, reason="left")]
    return out


async def folded(redis, rooms) -> dict[str, list]:
    for p in PROJECTIONS:
        await catch_up(redis, p)
    return {room: [await replay(redis, room, p) for p in PROJECTIONS] for room in rooms}


async def test_ended_rooms_leave_redis_and_read_back_the_same(redis_url, clients, tmp_path):
    redis = clients(redis_url)
    histories = ended(random_rooms(7, rooms=12, per_room=40, prefix="ret"))
    await write(redis, [r for records in histories.values() for r in records])
    before = await folded(redis, histories)
    reader = RoomReader(redis)
    lines = {room: [record_line(r) for r in await reader.read(room)] for room in histories}
    keep = sorted(histories)[0]
    await Control(redis, Keys()).join(keep, "listen")  # still wanted: stays

    archive = DirectoryArchive(tmp_path / "archive")
    archiver = Archiver(redis, archive, archive_after=0)
    result = await archiver.run_pass()
    assert sorted(result.archived) == sorted(set(histories) - {keep}) and result.skipped == {"desired": 1}
    for room in result.archived:
        assert not await redis.exists(Keys().events(room), Keys().meta(room), Keys().state(room, "participants"))
        assert await redis.get(Keys().archived(room)) == str(len(histories[room])).encode()  # the tombstone
        assert await redis.zscore(Keys().rooms(), room.encode()) is None
    assert await redis.exists(Keys().events(keep))

    archived_reader = RoomReader(redis, archive=archive)
    for room in histories:
        assert [record_line(r) for r in await archived_reader.read(room)] == lines[room]
        assert [await replay(redis, room, p, archive=archive) for p in PROJECTIONS] == before[room]
    many = await replay_many(redis, list(histories), PROJECTIONS, archive=archive)
    assert many == before
    assert (await archiver.run_pass()).archived == []  # nothing left to do, nothing done twice


async def test_a_room_archived_and_written_again_continues_its_sequence(redis_url, clients, tmp_path):
    redis = clients(redis_url)
    room = "again"
    first = ended(random_rooms(3, rooms=1, per_room=20, prefix="again"))
    [(room, records)] = first.items()
    await write(redis, records)
    await folded(redis, [room])
    archive = DirectoryArchive(tmp_path / "archive")
    assert (await Archiver(redis, archive, archive_after=0).run_pass()).archived == [room]
    n = len(records)
    await write(redis, [SessionStarted(room=room, session="later", ts=2e9, cause="join"),
                        SessionEnded(room=room, session="later", ts=2e9 + 1, reason="left")])
    reader = RoomReader(redis, archive=archive)
    seqs = [r.seq for r in await reader.read(room)]
    assert seqs == list(range(1, n + 3))  # gapless over archive + Redis, each once
    assert not await redis.exists(Keys().archived(room))  # the tombstone went with the first new append
    assert [r.seq for r in await reader.read(room, since=n - 1)] == [n, n + 1, n + 2]
    # consumers fold it from the archive (its state hash was removed with the room) and a second archive
    # pass adds a second segment
    for p in PROJECTIONS:  # the consumers find the gap and fold the archived part first
        await catch_up(redis, p, archive=archive)
    state = await replay(redis, room, PROJECTIONS[0], archive=archive)
    assert state.last_seq == n + 2
    for p in PROJECTIONS:
        materialized = msgspec.json.decode(await redis.hget(Keys().state(room, p.name), "state"), type=p.state_type)
        assert materialized == await replay(redis, room, p, archive=archive), p.name
    assert (await Archiver(redis, archive, archive_after=0).run_pass()).archived == [room]
    assert [(m.first_seq, m.last_seq) for m in await archive.segments(room)] == [(1, n), (n + 1, n + 2)]
    assert [r.seq for r in await reader.read(room)] == list(range(1, n + 3))


async def test_rooms_still_in_use_stay(redis_url, clients, tmp_path):
    redis = clients(redis_url)
    histories = ended(random_rooms(5, rooms=4, per_room=10, prefix="stay"))
    await write(redis, [r for records in histories.values() for r in records])
    held, unfolded, done, desired = sorted(histories)
    for p in PROJECTIONS:
        await catch_up(redis, p)
    await redis.hset(Keys().state(unfolded, "call-state"), "seq", 1)  # a projection behind
    await redis.hset(Keys().lease(held), mapping={"owner": "d/1", "epoch": 1, "expires": 2**52})
    await Control(redis, Keys()).join(desired, "listen")
    archive = DirectoryArchive(tmp_path / "archive")
    result = await Archiver(redis, archive, archive_after=0).run_pass()
    assert result.archived == [done] and result.skipped == {"held": 1, "not_folded": 1, "desired": 1}
    result = await Archiver(redis, archive, archive_after=3600).run_pass()  # an hour: all of them are recent
    assert result.archived == [] and result.skipped == {"held": 1, "recent": 1, "desired": 1}


async def test_an_archiver_killed_at_random_points_loses_and_duplicates_nothing(redis_url, clients, tmp_path):
    """``room-supervisor archive`` as a process, SIGKILLed after a random moment, again and again, then run to
    the end: every room is either in Redis as before or archived whole, and reads back the same."""
    redis = clients(redis_url)
    histories = ended(random_rooms(11, rooms=60, per_room=60, prefix="kill"))
    await write(redis, [r for records in histories.values() for r in records])
    await folded(redis, histories)
    reader = RoomReader(redis)
    expected = {room: [record_line(r) for r in await reader.read(room)] for room in histories}
    archive_dir = tmp_path / "archive"
    env = {**os.environ, "REDIS_URL": redis_url, "RS_RETENTION_ARCHIVE_DIR": str(archive_dir),
           "RS_RETENTION_ARCHIVE_AFTER": "0", "RS_RETENTION_LOCK_TTL": "1", "PYTHONPATH": REPO}
    rng = random.Random(42)
    kills = 0
    for _ in range(12):  # killed at a random moment while rooms are left, until none is
        if not await redis.zcard(Keys().rooms()):
            break
        proc = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "archive"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        await asyncio.to_thread(proc.wait, 30)
        await _consistent(redis, DirectoryArchive(archive_dir), histories, expected)
    await async_wait_until(lambda: _no_locks(redis), 30, "the locks of killed archivers to expire (lock_ttl 1 s)", 0.1)
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "supervisor.cli", "archive"], cwd=REPO,
                                   env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    archive = DirectoryArchive(archive_dir)
    await _consistent(redis, archive, histories, expected)
    assert sorted(await archive.rooms()) == sorted(histories)
    print(f"\n{kills} archivers killed mid-pass; every room archived whole once")


async def _no_locks(redis) -> bool:
    return not [key async for key in redis.scan_iter(match="rs:room:*:archiving")]


async def _consistent(redis, archive, histories, expected) -> None:
    keys = Keys()
    reader = RoomReader(redis, archive=archive)
    for room, lines in expected.items():
        assert [record_line(r) for r in await reader.read(room)] == lines, room
        in_redis = await redis.exists(keys.events(room))
        tomb = await redis.get(keys.archived(room))
        if tomb is not None:  # removed: whole, nothing of it left in Redis but the tombstone
            assert not in_redis and await archive.last_seq(room) == len(histories[room]), room
            assert not await redis.exists(keys.state(room, "participants"), keys.lease(room)), room
        else:
            assert await redis.xlen(keys.events(room)) == len(histories[room]), room


async def test_the_cli_reads_archived_rooms_and_refuses_to_archive_without_an_archive(redis_url, clients,
                                                                                     tmp_path):
    from daemonproc import run_cli

    redis = clients(redis_url)
    histories = ended(random_rooms(13, rooms=2, per_room=15, prefix="cli"))
    await write(redis, [r for records in histories.values() for r in records])
    await folded(redis, histories)
    room = sorted(histories)[0]
    env = {"REDIS_URL": redis_url, "RS_RETENTION_ARCHIVE_DIR": str(tmp_path / "archive"),
           "RS_RETENTION_ARCHIVE_AFTER": "0"}
    before = await asyncio.to_thread(run_cli, "events", room, env=_cli_env(env))
    replayed = await asyncio.to_thread(run_cli, "state", room, "--replay", env=_cli_env(env))
    assert before.returncode == 0 and replayed.returncode == 0, before.stderr + replayed.stderr

    none = await asyncio.to_thread(run_cli, "archive", env=_cli_env({"REDIS_URL": redis_url}))
    assert none.returncode == 2 and "set [retention] archive_dir" in none.stderr, none.stderr
    bad = await asyncio.to_thread(run_cli, "archive", "--later", env=_cli_env(env))
    assert bad.returncode == 2
    done = await asyncio.to_thread(run_cli, "archive", env=_cli_env(env))
    assert done.returncode == 0 and "2 room(s) archived" in done.stdout, done.stdout + done.stderr
    assert not await redis.exists(Keys().events(room))

    after = await asyncio.to_thread(run_cli, "events", room, env=_cli_env(env))
    assert after.returncode == 0 and after.stdout == before.stdout, after.stderr
    again = await asyncio.to_thread(run_cli, "state", room, "--replay", env=_cli_env(env))
    assert again.returncode == 0 and again.stdout == replayed.stdout, again.stderr
    blind = await asyncio.to_thread(run_cli, "events", room, env=_cli_env({"REDIS_URL": redis_url}))
    assert blind.returncode == 0 and blind.stdout == ""  # without the archive: known (tombstone), nothing in Redis


def _cli_env(extra: dict[str, str]) -> dict[str, str]:
    from daemonproc import cli_env

    return cli_env(extra)


async def test_a_lost_tombstone_never_costs_records(redis_url, clients, tmp_path):
    """Redis lost the tombstone (a restart without persistence): the room's seqs start again at 1, below the
    archive. The archiver refuses to remove those records (they are not in the archive) and says why."""
    redis = clients(redis_url)
    [(room, records)] = ended(random_rooms(17, rooms=1, per_room=10, prefix="lost")).items()
    await write(redis, records)
    await folded(redis, [room])
    archive = DirectoryArchive(tmp_path / "archive")
    assert (await Archiver(redis, archive, archive_after=0).run_pass()).archived == [room]
    await redis.delete(Keys().archived(room))  # what a Redis without persistence loses on a restart
    await write(redis, [SessionStarted(room=room, session="later", ts=2e9, cause="join"),
                        SessionEnded(room=room, session="later", ts=2e9 + 1, reason="left")])
    await folded(redis, [room])
    result = await Archiver(redis, archive, archive_after=0).run_pass()
    assert result.archived == [] and result.skipped == {"error": 1}
    assert await redis.xlen(Keys().events(room)) == 2  # still there


async def test_tombstones_expire_and_a_room_back_after_that_continues_from_the_archive(redis_url, clients, tmp_path):
    """Tombstones live ``tombstone_ttl`` (Redis keeps no trace of every call ever made); a room written again after
    that gets its last seq back from the archive (SequenceRestorer, which the daemon calls before a session's first
    record and before a webhook's) and continues at seq + 1."""
    redis = clients(redis_url)
    rooms = ended(random_rooms(23, rooms=3, per_room=12, prefix="ttl"))
    await write(redis, [r for records in rooms.values() for r in records])
    await folded(redis, rooms)
    archive = DirectoryArchive(tmp_path / "archive")
    keys = Keys()
    assert sorted((await Archiver(redis, archive, archive_after=0, tombstone_ttl=0.5).run_pass()).archived) \
        == sorted(rooms)
    for room in rooms:
        assert 0 < await redis.pttl(keys.archived(room)) <= 500
    await async_wait_until(lambda: _none_exist(redis, [keys.archived(r) for r in rooms]), timeout=30,
                           what="the tombstones expired")
    restorer = SequenceRestorer(redis, archive, tombstone_ttl=60)
    one, two, three = sorted(rooms)
    n = {room: len(records) for room, records in rooms.items()}
    assert await restorer.restore(one) == n[one]
    assert 0 < await redis.pttl(keys.archived(one)) <= 60_000
    assert await restorer.restore(one) == 0  # the tombstone is there: nothing to do
    assert await restorer.restore("never-archived") == 0
    assert not await redis.exists(keys.archived("never-archived"))
    again = [SessionStarted(room=one, session="later", ts=2e9, cause="join"),
             SessionEnded(room=one, session="later", ts=2e9 + 1, reason="left")]
    await write(redis, again)
    reader = RoomReader(redis, archive=archive)
    assert [r.seq for r in await reader.read(one)] == list(range(1, n[one] + 3))
    assert await restorer.restore(one) == 0  # meta exists: nothing to do
    # a tombstone that says more than the archive (written after it) is left as it is
    await redis.set(keys.archived(two), n[two] + 5)
    assert await restorer.restore(two) == 0 and int(await redis.get(keys.archived(two))) == n[two] + 5
    # tombstone_ttl = 0: kept until the room is written again
    await write(redis, [SessionStarted(room=three, session="b", ts=2e9, cause="join"),
                        SessionEnded(room=three, session="b", ts=2e9 + 1, reason="left")])
    await folded(redis, [one, three])
    forever = Archiver(redis, archive, archive_after=0, tombstone_ttl=0)
    archived = (await forever.run_pass()).archived
    assert one in archived and await redis.pttl(keys.archived(one)) == -1
    # three was written without its tombstone: its seqs started again at 1; the archiver refuses it
    assert three not in archived and await redis.xlen(keys.events(three)) == 2


async def _none_exist(redis, names: list[str]) -> bool:
    return not await redis.exists(*names)


async def test_a_long_lived_room_is_trimmed_behind_its_consumers_and_reads_whole(redis_url, clients, tmp_path):
    """A room still desired keeps its last ``keep_records`` records in Redis; the older ones every projection has
    folded go to the archive first, then out of the stream; readers and consumers given the archive see it all."""
    redis = clients(redis_url)
    [(room, records)] = random_rooms(19, rooms=1, per_room=120, prefix="long").items()
    await write(redis, records)
    await Control(redis, Keys()).join(room, "listen")
    before = await folded(redis, [room])
    lines = [record_line(r) for r in await RoomReader(redis).read(room)]
    archive = DirectoryArchive(tmp_path / "archive")
    result = await Archiver(redis, archive, archive_after=0, keep_records=30).run_pass()
    n = len(records)
    assert result.archived == [] and result.trimmed == n - 30, result
    assert await redis.xlen(Keys().events(room)) == 30
    assert await archive.last_seq(room) == n - 30
    reader = RoomReader(redis, archive=archive)
    assert [record_line(r) for r in await reader.read(room)] == lines
    assert [await replay(redis, room, p, archive=archive) for p in PROJECTIONS] == before[room]
    # more records come; consumers go on from their checkpoints in Redis, and a second pass trims again
    await write(redis, [SessionEnded(room=room, session=records[-1].session, ts=records[-1].ts + 1, reason="left")])
    for p in PROJECTIONS:
        await catch_up(redis, p, archive=archive)
    assert (await Archiver(redis, archive, archive_after=0, keep_records=30).run_pass()).trimmed == 1
    assert [r.seq for r in await reader.read(room)] == list(range(1, n + 2))


async def test_a_room_with_entries_written_by_others_is_left_whole(redis_url, clients, tmp_path):
    """An entry that is not a record (written by hand, or by a newer schema) would not read back as one: the room
    is not archived, nothing of it is removed, and the pass goes on with the other rooms."""
    redis = clients(redis_url)
    histories = ended(random_rooms(23, rooms=2, per_room=10, prefix="foreign"))
    await write(redis, [r for records in histories.values() for r in records])
    await folded(redis, histories)
    dirty, clean = sorted(histories)
    entry = await redis.xadd(Keys().events(dirty), {"type": "nonsense", "seq": "x", "rec": "{not json"})
    result = await Archiver(redis, DirectoryArchive(tmp_path / "archive"), archive_after=0).run_pass()
    assert result.archived == [clean] and result.skipped == {"error": 1}
    assert await redis.xlen(Keys().events(dirty)) == len(histories[dirty]) + 1
    assert (await redis.xrange(Keys().events(dirty), min=entry, max=entry))[0][1][b"rec"] == b"{not json"


async def test_state_of_an_archived_room_is_replayed_from_the_archive(redis_url, clients, tmp_path):
    from daemonproc import run_cli

    redis = clients(redis_url)
    [(room, records)] = ended(random_rooms(29, rooms=1, per_room=12, prefix="shown")).items()
    await write(redis, records)
    await folded(redis, [room])
    env = _cli_env({"REDIS_URL": redis_url, "RS_RETENTION_ARCHIVE_DIR": str(tmp_path / "a"),
                    "RS_RETENTION_ARCHIVE_AFTER": "0"})
    live = await asyncio.to_thread(run_cli, "state", room, "--projection", "participants", env=env)
    assert (await asyncio.to_thread(run_cli, "archive", env=env)).returncode == 0
    archived = await asyncio.to_thread(run_cli, "state", room, "--projection", "participants", env=env)
    assert archived.returncode == 0, archived.stderr
    head, _, body = archived.stdout.partition("\n")
    assert head == f"# participants (archived; replayed from the archive, up to seq {len(records)})"
    assert body == live.stdout.partition("\n")[2]  # the same state the consumer held


@pytest.mark.livekit
async def test_the_daemon_joins_a_room_archived_long_ago_and_it_continues(tmp_path, redis_url, clients,
                                                                          livekit_server):
    """A real daemon and a real LiveKit: a room's call ends, the room is archived and its tombstone expires; joined
    again, the daemon takes the last seq back from the archive before the session's first record, so the new
    session continues at seq + 1 and the room reads gapless over archive and Redis."""
    from daemonproc import DaemonProcess, observing, run_cli, start_in_rooms

    redis = clients(redis_url)
    room = f"back {uuid.uuid4().hex[:6]}"
    archive = DirectoryArchive(tmp_path / "archive")
    daemon = DaemonProcess(tmp_path, redis_url, livekit_server.url,
                           env={"RS_RETENTION_ARCHIVE_DIR": str(tmp_path / "archive")})
    async with observing(daemon) as observer:
        await start_in_rooms(daemon, observer, [room])
        assert run_cli("leave", room, config=daemon.config).returncode == 0

        async def ended_and_released() -> bool:
            types = await observer.types(room)
            return types[-1] == "session_ended" and not await redis.hget(Keys().lease(room), "owner")

        await async_wait_until(ended_and_released, 60, "the session to end and its lease to go")
        n = len(await observer.records(room))
        await folded(redis, [room])
        archiver = Archiver(redis, archive, archive_after=0, tombstone_ttl=0.2)
        assert (await archiver.run_pass()).archived == [room]
        await async_wait_until(lambda: _none_exist(redis, [Keys().archived(room)]), 30, "the tombstone expired")
        assert run_cli("join", room, config=daemon.config).returncode == 0
        await async_wait_until(lambda: _connected_again(redis, room), 120, "the bot back in the room")
        records = await RoomReader(redis, archive=archive).read(room)
        assert [r.seq for r in records] == list(range(1, len(records) + 1))
        restarted = [r for r in records if isinstance(r, SessionStarted)]
        assert len(restarted) == 2 and restarted[1].seq == n + 1
        assert run_cli("leave", room, config=daemon.config).returncode == 0


async def _connected_again(redis, room: str) -> bool:
    types = [type(r).__struct_config__.tag for r in await RoomReader(redis).read(room)]
    return types[:1] == ["session_started"] and "connected" in types
