"""The spool file: framing, persisted read offset, torn frames, and replay by a new EventWriter."""

from __future__ import annotations

import struct
import zlib

import pytest

from eventstore.codec import decode_entry, encode_for_append
from eventstore.connection import connect
from eventstore.keys import Keys
from eventstore.records import DataReceived, ParticipantConnected
from eventstore.spool import Spool, SpoolError, SpoolUnit
from eventstore.writer import EventWriter


def unit(room: str, n: int, token: str | None = None) -> SpoolUnit:
    records = [ParticipantConnected(room=room, session="s", ts=float(n), participant_id=f"{room}:{n}"),
               DataReceived(room=room, session="s", ts=float(n), data=bytes([n % 256]) * 3)]
    return SpoolUnit(room, token or f"tok-{room}-{n}", 0, [encode_for_append(r) for r in records])


def read_all(spool: Spool) -> list[SpoolUnit]:
    """Everything pending, consuming as it goes (as the writer does after each round trip)."""
    out: list[SpoolUnit] = []
    while True:
        got = spool.read(max_units=100)
        if not got:
            return out
        out += [u for u, _ in got]
        spool.consumed(got[-1][1])


def test_units_round_trip_in_order(tmp_path):
    spool = Spool(tmp_path / "s.spool")
    assert spool.empty and spool.pending_bytes == 0
    units = [unit(f"room-{n % 3}", n) for n in range(10)]
    for u in units:
        spool.append(u)
    assert not spool.empty
    assert read_all(spool) == units
    assert spool.empty and (tmp_path / "s.spool").stat().st_size == 0  # emptied once all is consumed
    spool.close()


def test_read_stops_before_a_second_unit_of_the_same_room(tmp_path):
    spool = Spool(tmp_path / "s.spool")
    for u in [unit("a", 0), unit("b", 1), unit("a", 2), unit("c", 3)]:
        spool.append(u)
    first = spool.read(max_units=10)
    assert [u.token for u, _ in first] == ["tok-a-0", "tok-b-1"]
    assert spool.read(max_units=1) == first[:1]
    spool.consumed(first[-1][1])
    assert [u.token for u, _ in spool.read(max_units=10)] == ["tok-a-2", "tok-c-3"]
    spool.close()


def test_offset_survives_reopen(tmp_path):
    path = tmp_path / "s.spool"
    spool = Spool(path)
    for n in range(5):
        spool.append(unit(f"r{n}", n))
    got = spool.read(max_units=2)
    spool.consumed(got[-1][1])
    spool.close()
    again = Spool(path)
    assert [u.token for u in read_all(again)] == [f"tok-r{n}-{n}" for n in range(2, 5)]
    again.close()


@pytest.mark.parametrize("offset", ["not a number", "999999"])
def test_unreadable_or_impossible_offset_replays_from_start(tmp_path, offset):
    path = tmp_path / "s.spool"
    spool = Spool(path)
    units = [unit("r", n) for n in range(3)]
    for u in units:
        spool.append(u)
    spool.close()
    (tmp_path / "s.spool.offset").write_text(offset)
    spool = Spool(path)
    assert read_all(spool) == units  # replayed again from the start: at least once
    spool.close()


def _frames(path) -> list[tuple[int, int]]:
    """(offset, length) of every frame in a spool file."""
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        length, _ = struct.unpack(">II", data[pos : pos + 8])
        out.append((pos, 8 + length))
        pos += 8 + length
    return out


@pytest.mark.parametrize("tear", ["half_header", "half_payload", "bad_crc"])
def test_torn_last_frame_is_dropped_and_the_rest_kept(tmp_path, tear):
    path = tmp_path / "s.spool"
    spool = Spool(path)
    units = [unit(f"r{n}", n) for n in range(4)]
    for u in units:
        spool.append(u)
    spool.close()
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
    assert read_all(spool) == units[:3]
    assert path.stat().st_size == 0
    spool.close()


@pytest.mark.parametrize("tear", ["half_header", "half_payload"])
def test_units_appended_after_a_torn_frame_are_kept(tmp_path, tear):
    # A writer died mid-frame; the next one opens the spool and appends before it replays anything.
    path = tmp_path / "s.spool"
    spool = Spool(path)
    for n in range(2):
        spool.append(unit("old", n))
    spool.close()
    last_at, last_len = _frames(path)[-1]
    cut = last_at + (5 if tear == "half_header" else last_len - 7)
    path.write_bytes(path.read_bytes()[:cut])
    spool = Spool(path)
    newer = [unit("new", n) for n in range(3)]
    for u in newer:
        spool.append(u)
    assert read_all(spool) == [unit("old", 0)] + newer
    spool.close()


def test_full_spool_refuses_more(tmp_path):
    spool = Spool(tmp_path / "s.spool", max_bytes=1000)
    spool.append(unit("r", 0))
    with pytest.raises(SpoolError):
        for n in range(1, 10):
            spool.append(unit("r", n))
    spool.close()


def test_frame_layout(tmp_path):
    path = tmp_path / "s.spool"
    spool = Spool(path, fsync=True)
    spool.append(unit("r", 0))
    spool.close()
    data = path.read_bytes()
    length, crc = struct.unpack(">II", data[:8])
    assert len(data) == 8 + length and zlib.crc32(data[8:]) == crc


async def test_new_writer_replays_a_spool_left_by_an_earlier_run(tmp_path, redis_url):
    path = tmp_path / "w.spool"
    spool = Spool(path)
    expected: dict[str, list[str]] = {"a": [], "b": []}
    for n in range(6):
        u = unit("a" if n % 2 else "b", n)
        spool.append(u)
        expected[u.room] += [f"{u.room}:{n}", ""]
    spool.close()
    with open(path, "ab") as f:  # and a torn frame at the end
        f.write(struct.pack(">II", 500, 0) + b"\x00" * 20)
    r = connect(redis_url)
    try:
        writer = EventWriter(r, spool=Spool(path))
        await writer.start()
        assert await writer.flush(timeout=30)
        await writer.aclose()
        keys = Keys()
        for room, ids in expected.items():
            got = [decode_entry(f) for _, f in await r.xrange(keys.events(room))]
            assert [x.seq for x in got] == list(range(1, 7))
            assert [getattr(x, "participant_id", "") or "" for x in got] == ids
        left = Spool(path)
        assert left.empty
        left.close()
    finally:
        await r.aclose()


def test_a_frame_that_does_not_decode_is_set_aside_and_the_rest_is_kept(tmp_path):
    import zlib

    from eventstore.spool import _HEADER, Spool, SpoolUnit

    spool = Spool(tmp_path / "w.spool")
    spool.append(SpoolUnit("r1", "t1", 0, [("connected", b"{}", b"")]))
    bad = b"\x93not a unit"
    spool._file.write(_HEADER.pack(len(bad), zlib.crc32(bad)) + bad)
    spool._file.flush()
    spool._size += _HEADER.size + len(bad)
    spool.append(SpoolUnit("r2", "t2", 0, [("connected", b"{}", b"")]))
    read = spool.read(10)
    assert [u.room for u, _ in read] == ["r1", "r2"]
    spool.consumed(read[-1][1])
    assert spool.empty
    assert (tmp_path / "w.spool.corrupt").read_bytes().endswith(bad)
    spool.close()
