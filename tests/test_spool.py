"""The spool file: framing, all-or-nothing appends, replay windows and their persisted bounds, torn frames, and
replay by a new EventWriter."""

from __future__ import annotations

import struct
import zlib

import msgspec
import pytest

from eventstore.codec import decode_entry, encode_for_append
from eventstore.connection import connect
from eventstore.keys import Keys
from eventstore.records import DataReceived, ParticipantConnected
from eventstore.spool import Spool, SpoolError, SpoolUnit, SpoolWindow
from eventstore.writer import _APPEND_LUA, EventWriter


def unit(room: str, n: int, token: str | None = None, *, epoch: int = 0, sent: bool = False) -> SpoolUnit:
    records = [ParticipantConnected(room=room, session="s", ts=float(n), participant_id=f"{room}:{n}"),
               DataReceived(room=room, session="s", ts=float(n), data=bytes([n % 256]) * 3)]
    return SpoolUnit(room, token or f"tok-{room}-{n}", epoch, [encode_for_append(r) for r in records], sent)


async def drain(spool: Spool, max_batch: int = 100) -> list[SpoolWindow]:
    """Every window until the spool is empty, consuming each (as the writer does after each round trip)."""
    out: list[SpoolWindow] = []
    while (window := await spool.next_window(max_batch)) is not None:
        out.append(window)
        await spool.consumed(window)
    return out


def items_of(windows: list[SpoolWindow]) -> dict[str, list]:
    """Per room, every record in the order the windows would send them."""
    out: dict[str, list] = {}
    for w in windows:
        for b in w.batches:
            out.setdefault(b.room, []).extend(b.items)
    return out


def as_items(units: list[SpoolUnit]) -> dict[str, list]:
    out: dict[str, list] = {}
    for u in units:
        out.setdefault(u.room, []).extend(u.items)
    return out


async def test_units_round_trip_in_order(tmp_path):
    spool = Spool(tmp_path / "s.spool")
    assert spool.empty and spool.pending_bytes == 0
    units = [unit(f"room-{n % 3}", n) for n in range(10)]
    for u in units:
        await spool.append(u)
    assert not spool.empty
    windows = await drain(spool)
    assert items_of(windows) == as_items(units)
    assert spool.empty and (tmp_path / "s.spool").stat().st_size == 0  # emptied once all is consumed
    await spool.aclose()


async def test_a_window_is_one_batch_per_room_under_the_last_units_token(tmp_path):
    spool = Spool(tmp_path / "s.spool")
    await spool.append(unit("a", 0), unit("b", 1), unit("a", 2), unit("c", 3))
    window = await spool.next_window(max_batch=10)
    assert [(b.room, b.token, len(b.items)) for b in window.batches] == [
        ("a", "tok-a-2", 4), ("b", "tok-b-1", 2), ("c", "tok-c-3", 2)]
    assert await spool.next_window(max_batch=10) is window  # the same window until it is consumed
    await spool.consumed(window)
    assert spool.empty
    await spool.aclose()


@pytest.mark.parametrize("breaker", ["max_batch", "epoch", "sent_after", "sent_before"])
async def test_a_window_ends_before_a_second_batch_of_a_room(tmp_path, breaker):
    spool = Spool(tmp_path / "s.spool")
    second = {"max_batch": unit("a", 2), "epoch": unit("a", 2, epoch=1), "sent_after": unit("a", 2, sent=True),
              "sent_before": unit("a", 2)}[breaker]
    first = unit("a", 0, sent=breaker == "sent_before")
    await spool.append(first, unit("b", 1), second, unit("c", 3))
    windows = await drain(spool, max_batch=3)
    assert [[(b.room, b.token) for b in w.batches] for w in windows] == [
        [("a", "tok-a-0"), ("b", "tok-b-1")], [("a", "tok-a-2"), ("c", "tok-c-3")]]
    assert [b.sent for w in windows for b in w.batches] == [
        breaker == "sent_before", False, breaker == "sent_after", False]
    await spool.aclose()


async def test_a_window_takes_at_most_max_rooms(tmp_path):
    spool = Spool(tmp_path / "s.spool")
    await spool.append(*[unit(f"r{n}", n) for n in range(5)])
    window = await spool.next_window(max_batch=10, max_rooms=2)
    assert [b.room for b in window.batches] == ["r0", "r1"]
    await spool.aclose()


async def test_a_window_in_flight_is_read_again_the_same_way_after_a_restart(tmp_path):
    # Its batches may be in Redis: after a crash they must come back with the same tokens (recognized as retries),
    # even though more units were appended since and the new run's max_batch differs.
    path = tmp_path / "s.spool"
    spool = Spool(path)
    await spool.append(unit("a", 0), unit("b", 1), unit("a", 2))
    first = await spool.next_window(max_batch=100)
    assert [b.token for b in first.batches] == ["tok-a-2", "tok-b-1"]
    await spool.append(unit("a", 3), unit("b", 4))
    spool.close()  # the window was never consumed, as after a crash
    again = Spool(path)
    window = await again.next_window(max_batch=2)
    assert (window.start, window.end) == (first.start, first.end)
    assert window.batches == first.batches
    await again.consumed(window)
    rest = await drain(again, max_batch=2)
    assert [[b.token for b in w.batches] for w in rest] == [["tok-a-3", "tok-b-4"]]
    await again.aclose()


async def test_offset_survives_reopen(tmp_path):
    path = tmp_path / "s.spool"
    spool = Spool(path)
    for n in range(5):
        await spool.append(unit(f"r{n}", n))
    window = await spool.next_window(max_batch=10, max_rooms=2)
    await spool.consumed(window)
    await spool.aclose()  # persists the read position
    assert (tmp_path / "s.spool.offset").read_text().split() == [str(window.end)] * 2
    again = Spool(path)
    assert [b.token for w in await drain(again) for b in w.batches] == [f"tok-r{n}-{n}" for n in range(2, 5)]
    await again.aclose()


async def test_an_offset_file_of_an_earlier_version_and_units_without_sent_are_read(tmp_path):
    path = tmp_path / "s.spool"
    old = [msgspec.msgpack.encode(["r", f"t{n}", 0, [["connected", b"{}", b""]]]) for n in range(3)]
    path.write_bytes(b"".join(struct.pack(">II", len(p), zlib.crc32(p)) + p for p in old))
    (tmp_path / "s.spool.offset").write_text(str(8 + len(old[0])))
    spool = Spool(path)
    window = await spool.next_window(max_batch=10)
    assert window.batches == [SpoolUnit("r", "t2", 0, [("connected", b"{}", b"")] * 2)]
    await spool.aclose()


@pytest.mark.parametrize("offset", ["not a number", "999999", "999999 999999", "5 3", "1 2 3"])
async def test_unreadable_or_impossible_offset_replays_from_start(tmp_path, offset):
    path = tmp_path / "s.spool"
    spool = Spool(path)
    units = [unit("r", n) for n in range(3)]
    await spool.append(*units)
    await spool.aclose()
    (tmp_path / "s.spool.offset").write_text(offset)
    spool = Spool(path)
    assert items_of(await drain(spool)) == as_items(units)  # replayed again from the start: at least once
    await spool.aclose()


def _frames(path) -> list[tuple[int, int]]:
    """(offset, length) of every frame in a spool file."""
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        length, _ = struct.unpack(">II", data[pos : pos + 8])
        out.append((pos, 8 + length))
        pos += 8 + length
    return out


@pytest.mark.parametrize("tear", ["half_header", "half_payload", "bad_crc"])
async def test_torn_last_frame_is_dropped_and_the_rest_kept(tmp_path, tear):
    path = tmp_path / "s.spool"
    spool = Spool(path)
    units = [unit(f"r{n}", n) for n in range(4)]
    await spool.append(*units)
    await spool.aclose()
    last_at, last_len = _frames(path)[-1]
    data = bytearray(path.read_bytes())
    if tear == "half_header":
        del data[last_at + 5 :]
    elif tear == "half_payload":
        del data[last_at + last_len - 7 :]
    else:
        data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    spool = Spool(path)
    assert items_of(await drain(spool)) == as_items(units[:3])
    assert path.stat().st_size == 0
    await spool.aclose()


@pytest.mark.parametrize("tear", ["half_header", "half_payload"])
async def test_units_appended_after_a_torn_frame_are_kept(tmp_path, tear):
    # A writer died mid-frame; the next one opens the spool and appends before it replays anything.
    path = tmp_path / "s.spool"
    spool = Spool(path)
    await spool.append(unit("old", 0), unit("old", 1))
    await spool.aclose()
    last_at, last_len = _frames(path)[-1]
    cut = last_at + (5 if tear == "half_header" else last_len - 7)
    path.write_bytes(path.read_bytes()[:cut])
    spool = Spool(path)
    newer = [unit("new", n) for n in range(3)]
    for u in newer:
        await spool.append(u)
    assert items_of(await drain(spool)) == as_items([unit("old", 0)] + newer)
    await spool.aclose()


async def test_full_spool_refuses_more_and_a_refused_append_writes_nothing(tmp_path):
    path = tmp_path / "s.spool"
    spool = Spool(path, max_bytes=1000)
    await spool.append(unit("r", 0))
    size = path.stat().st_size
    with pytest.raises(SpoolError, match="full"):
        await spool.append(*[unit("r", n) for n in range(1, 10)])  # the first few would fit: none is written
    assert path.stat().st_size == size and spool.pending_bytes == size
    await spool.append(unit("r", 1))  # what fits still goes in
    assert items_of(await drain(spool)) == as_items([unit("r", 0), unit("r", 1)])
    await spool.aclose()


async def test_frame_layout(tmp_path):
    path = tmp_path / "s.spool"
    spool = Spool(path, fsync=True)
    await spool.append(unit("r", 0))
    window = await spool.next_window(max_batch=10)
    assert (tmp_path / "s.spool.offset").read_text().split() == ["0", str(window.end)]
    await spool.aclose()
    data = path.read_bytes()
    length, crc = struct.unpack(">II", data[:8])
    assert len(data) == 8 + length and zlib.crc32(data[8:]) == crc
    assert msgspec.msgpack.decode(data[8:], type=EarlierUnit) == EarlierUnit(*msgspec.structs.astuple(unit("r", 0))[:4])


class EarlierUnit(msgspec.Struct, array_like=True):
    """SpoolUnit as versions before ``sent`` declared it: they still read today's frames."""

    room: str
    token: str
    epoch: int
    items: list[tuple[str, bytes, bytes]]


async def test_a_closed_spool_refuses_work(tmp_path):
    spool = Spool(tmp_path / "s.spool")
    await spool.aclose()
    await spool.aclose()  # twice is fine
    spool.close()
    with pytest.raises(SpoolError, match="closed"):
        await spool.append(unit("r", 0))
    with pytest.raises(SpoolError, match="closed"):
        await spool.next_window(10)


async def test_new_writer_replays_a_spool_left_by_an_earlier_run(tmp_path, redis_url):
    path = tmp_path / "w.spool"
    spool = Spool(path)
    expected: dict[str, list[str]] = {"a": [], "b": []}
    for n in range(6):
        u = unit("a" if n % 2 else "b", n)
        await spool.append(u)
        expected[u.room] += [f"{u.room}:{n}", ""]
    await spool.aclose()
    with open(path, "ab") as f:  # and a torn frame at the end
        f.write(struct.pack(">II", 500, 0) + b"\x00" * 20)
    r = connect(redis_url)
    try:
        await r.script_load(_APPEND_LUA)  # so that no round trip is spent on loading it
        writer = EventWriter(r, spool=await Spool.open(path))
        await writer.start()
        assert await writer.flush(timeout=30)
        await writer.aclose()
        keys = Keys()
        for room, ids in expected.items():
            got = [decode_entry(f) for _, f in await r.xrange(keys.events(room))]
            assert [x.seq for x in got] == list(range(1, 7))
            assert [getattr(x, "participant_id", "") or "" for x in got] == ids
        assert writer.stats.round_trips == 1  # both rooms, three units each, in one window
        left = Spool(path)
        assert left.empty
        left.close()
    finally:
        await r.aclose()


async def test_a_frame_that_does_not_decode_is_set_aside_and_the_rest_is_kept(tmp_path):
    path = tmp_path / "w.spool"
    spool = Spool(path)
    await spool.append(SpoolUnit("r1", "t1", 0, [("connected", b"{}", b"")]))
    await spool.aclose()
    bad = b"\x93not a unit"
    with open(path, "ab") as f:
        f.write(struct.pack(">II", len(bad), zlib.crc32(bad)) + bad)
    spool = Spool(path)
    await spool.append(SpoolUnit("r2", "t2", 0, [("connected", b"{}", b"")]))
    windows = await drain(spool)
    assert [b.room for w in windows for b in w.batches] == ["r1", "r2"]
    assert spool.empty
    assert (tmp_path / "w.spool.corrupt").read_bytes().endswith(bad)
    await spool.aclose()
