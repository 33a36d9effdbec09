"""The archive's storage and file format (eventstore.archive): real files in a temporary directory, no Redis.

Entries are built as the append script writes them (``type``, ``seq``, ``rec`` with the seq in place, ``data`` for
data_received), so what goes in is what the archiver will read from a room's stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgspec
import pytest

from eventstore.archive import (
    FORMAT,
    ArchiveConflict,
    ArchiveCorrupt,
    ArchiveGap,
    ArchiveInvalidEntry,
    DirectoryArchive,
    SegmentManifest,
    encode_manifest,
    encode_segment,
    manifest_name,
    room_dir_name,
    segment_name,
)
from eventstore.codec import decode_entry, encode_for_append
from eventstore.keys import decode_name, encode_name
from eventstore.records import Connected, DataReceived, ParticipantConnected, Record

ROOT = Path(__file__).resolve().parents[1]
ROOM = "room 1"
EVERY_BYTE = bytes(range(256))

Entries = list[tuple[bytes, dict[bytes, bytes]]]


def fields_of(record: Record, seq: int) -> dict[bytes, bytes]:
    """The fields the append script writes for ``record`` as entry number ``seq``."""
    t, rec, data = encode_for_append(record)
    head = f'{{"type":"{t}","seq":0,'.encode()
    assert rec.startswith(head)
    fields = {b"type": t.encode(), b"seq": str(seq).encode(), b"rec": f'{{"type":"{t}","seq":{seq},'.encode()
              + rec[len(head):]}
    if data:
        fields[b"data"] = data[1:]
    return fields


def make_entries(first: int, last: int, room: str = ROOM, *, tag: str = "") -> Entries:
    """Entries ``first..last``: a data packet (every byte value, or empty), a participant with awkward text, a
    connect; ids as Redis makes them."""
    out: Entries = []
    for seq in range(first, last + 1):
        record: Record
        if seq % 3 == 0:
            payload = EVERY_BYTE + bytes([seq % 256]) if seq % 2 else b""
            record = DataReceived(room=room, session="s", ts=1.25, participant_id="alice", data=payload, topic="t")
        elif seq % 3 == 1:
            record = ParticipantConnected(room=room, session="s", ts=2.5,
                                          participant_id=f"p{seq}{tag} ünï \n\r\u2028 \"q\" \\ 🎉")
        else:
            record = Connected(room=room, session="s", ts=3.0, identity="bot", participants=["a", "b"])
        out.append((f"{1700000000000 + seq}-{seq % 2}".encode(), fields_of(record, seq)))
    return out


def as_read(entries: Entries) -> list[tuple[str, dict[bytes, bytes]]]:
    return [(entry_id.decode(), dict(fields)) for entry_id, fields in entries]


async def read_all(archive: DirectoryArchive, room: str = ROOM, since: int = 0) -> list[tuple[str, dict]]:
    return [entry async for entry in archive.entries(room, since)]


def seg_path(archive: DirectoryArchive, manifest: SegmentManifest, room: str = ROOM) -> Path:
    return archive.room_dir(room) / segment_name(manifest.first_seq, manifest.last_seq)


def rewrite(archive: DirectoryArchive, manifest: SegmentManifest, data: bytes, room: str = ROOM) -> SegmentManifest:
    """Replace a segment's file by ``data`` and make its manifest agree (size and checksum)."""
    seg_path(archive, manifest, room).write_bytes(data)
    fixed = msgspec.structs.replace(manifest, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (archive.room_dir(room) / manifest_name(manifest.first_seq, manifest.last_seq)).write_bytes(encode_manifest(fixed))
    return fixed


# --- round trips ------------------------------------------------------------------------------------------


async def test_entries_come_back_exactly_as_the_stream_had_them(tmp_path):
    archive = DirectoryArchive(tmp_path / "archive")
    entries = make_entries(1, 9)
    assert any(f.get(b"data") == EVERY_BYTE + b"\x03" for _, f in entries)
    assert any(f.get(b"data") == b"" for _, f in entries) and any(b"data" not in f for _, f in entries)

    manifest = await archive.put_segment(ROOM, entries)

    assert await read_all(archive) == as_read(entries)
    assert await archive.read_room(ROOM) == as_read(entries)
    assert await archive.read_room(ROOM, since=4) == as_read(entries)[4:]
    for (_, original), (_, back) in zip(entries, await read_all(archive)):
        assert decode_entry(back) == decode_entry(original)
    data = seg_path(archive, manifest).read_bytes()
    assert manifest == SegmentManifest(
        format=FORMAT, room=ROOM, first_seq=1, last_seq=9, count=9, sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data), archived_at=manifest.archived_at, first_id="1700000000001-1", last_id="1700000000009-1")
    assert abs(manifest.archived_at - time.time()) < 60
    assert await archive.segments(ROOM) == [manifest]
    assert await archive.last_seq(ROOM) == 9
    assert await archive.rooms() == [ROOM]
    await archive.verify_segment(ROOM, manifest)


def read_like_a_person(segment: Path) -> tuple[list[str], dict]:
    """A segment's lines and its manifest, read as `zcat seg-*.jsonl.gz | python -c json.loads` and `jq` would:
    with gzip and json only."""
    with gzip.open(segment, "rt", encoding="utf-8") as f:
        lines = list(f)
    with open(segment.with_name(segment.name.removesuffix(".jsonl.gz") + ".json")) as f:
        return lines, json.load(f)


async def test_a_person_reads_a_segment_with_gzip_and_json(tmp_path):
    archive = DirectoryArchive(tmp_path)
    entries = make_entries(1, 6)
    manifest = await archive.put_segment(ROOM, entries)
    room_dir = tmp_path / "room%201"
    assert sorted(os.listdir(room_dir)) == [".lock", "seg-00000000000000000001-00000000000000000006.json",
                                             "seg-00000000000000000001-00000000000000000006.jsonl.gz"]

    lines, stored = read_like_a_person(room_dir / "seg-00000000000000000001-00000000000000000006.jsonl.gz")
    assert len(lines) == 6
    for line, (entry_id, fields) in zip(lines, entries):
        obj = json.loads(line)
        assert obj["id"] == entry_id.decode() and obj["type"] == fields[b"type"].decode()
        assert obj["seq"] == int(fields[b"seq"])
        assert obj["rec"] == json.loads(fields[b"rec"])
        assert list(obj) == ["id", "type", "seq", "rec"] + (["data_b64"] if b"data" in fields else [])
        if b"data" in fields:
            assert base64.b64decode(obj["data_b64"]) == fields[b"data"]
        assert b'"rec":' + fields[b"rec"] in line.encode()  # the rec text verbatim, not re-encoded

    assert stored == {"format": "rs-archive/1", "room": ROOM, "first_seq": 1, "last_seq": 6, "count": 6,
                      "sha256": manifest.sha256, "bytes": manifest.bytes, "archived_at": manifest.archived_at,
                      "first_id": "1700000000001-1", "last_id": "1700000000006-0"}


async def test_segments_read_back_across_their_boundaries_from_any_seq(tmp_path):
    archive = DirectoryArchive(tmp_path, fsync=False, chunk_lines=3)  # chunks end inside and at segment ends
    ranges = [(1, 4), (5, 9), (10, 10), (11, 20)]
    entries = {seq: e for first, last in ranges for seq, e in zip(range(first, last + 1), make_entries(first, last))}
    for first, last in ranges:
        await archive.put_segment(ROOM, [entries[s] for s in range(first, last + 1)])

    assert [(m.first_seq, m.last_seq) for m in await archive.segments(ROOM)] == ranges
    assert await archive.last_seq(ROOM) == 20
    for since in range(-1, 23):
        got = await read_all(archive, since=since)
        assert got == as_read([entries[s] for s in range(max(since, 0) + 1, 21)]), since
        assert await archive.read_room(ROOM, since=since) == got, since


async def test_a_reader_that_stops_early_leaves_nothing_behind(tmp_path):
    archive = DirectoryArchive(tmp_path, fsync=False, chunk_lines=2)
    await archive.put_segment(ROOM, make_entries(1, 10))
    async with contextlib.aclosing(archive.entries(ROOM, since=3)) as it:
        async for entry_id, fields in it:
            assert fields[b"seq"] == b"4"
            break
    # the task guard (conftest) fails the test if a reading task is still pending


async def test_an_archive_may_start_after_seq_1(tmp_path):
    archive = DirectoryArchive(tmp_path, fsync=False)
    await archive.put_segment(ROOM, make_entries(7, 9))
    await archive.put_segment(ROOM, make_entries(10, 10))
    assert await archive.last_seq(ROOM) == 10
    assert [f[b"seq"] for _, f in await read_all(archive)] == [b"7", b"8", b"9", b"10"]


# --- refused writes -----------------------------------------------------------------------------------------


async def test_gaps_and_overlaps_are_refused(tmp_path):
    archive = DirectoryArchive(tmp_path, fsync=False)
    one_to_eight = make_entries(1, 8)
    with pytest.raises(ArchiveGap, match="no entries"):
        await archive.put_segment(ROOM, [])
    with pytest.raises(ArchiveGap, match="not consecutive"):
        await archive.put_segment(ROOM, one_to_eight[:2] + one_to_eight[3:4])
    with pytest.raises(ArchiveGap, match="not consecutive"):
        await archive.put_segment(ROOM, [one_to_eight[1], one_to_eight[0]])
    assert await archive.segments(ROOM) == []

    first = await archive.put_segment(ROOM, one_to_eight[:4])
    for refused in (one_to_eight[5:7], one_to_eight[2:6], one_to_eight[:3], one_to_eight[:5], one_to_eight[4:4]):
        with pytest.raises(ArchiveGap):
            await archive.put_segment(ROOM, refused)
    assert await archive.segments(ROOM) == [first]
    assert sorted(p.name for p in archive.room_dir(ROOM).iterdir()) == [
        ".lock", manifest_name(1, 4), segment_name(1, 4)]


@pytest.mark.parametrize("spoil", ["extra_field", "not_json", "bad_seq_text", "bad_id", "pretty_rec", "no_type"])
async def test_entries_that_would_not_read_back_are_refused(tmp_path, spoil):
    archive = DirectoryArchive(tmp_path, fsync=False)
    entries = make_entries(1, 3)
    entry_id, fields = entries[1]
    fields = dict(fields)
    if spoil == "extra_field":
        fields[b"other"] = b"x"
    elif spoil == "not_json":
        fields[b"rec"] = b"{garbage}"
    elif spoil == "bad_seq_text":  # decodes (int(b"02") == 2) but would come back as b"2"
        fields[b"seq"] = b"02"
    elif spoil == "bad_id":
        entry_id = b"not-an-id"
    elif spoil == "pretty_rec":  # valid JSON, but a line break would split the line
        fields[b"rec"] = fields[b"rec"].replace(b",", b",\n", 1)
        decode_entry(fields)
    elif spoil == "no_type":
        del fields[b"type"]
    entries[1] = (entry_id, fields)
    with pytest.raises(ArchiveInvalidEntry):
        await archive.put_segment(ROOM, entries)
    assert await archive.segments(ROOM) == [] and await archive.rooms() == []


async def test_a_re_put_returns_the_stored_segment_and_other_content_is_a_conflict(tmp_path):
    archive = DirectoryArchive(tmp_path)
    entries = make_entries(1, 8)
    first = await archive.put_segment(ROOM, entries[:4])
    second = await archive.put_segment(ROOM, entries[4:])
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in archive.room_dir(ROOM).iterdir()}

    assert await archive.put_segment(ROOM, entries[:4]) == first  # an archiver redoing an earlier step
    assert await archive.put_segment(ROOM, entries[4:]) == second
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in archive.room_dir(ROOM).iterdir()} == before

    other = make_entries(1, 4, tag="x")
    with pytest.raises(ArchiveConflict, match="other content"):
        await archive.put_segment(ROOM, other)
    moved = [(b"1800000000001-0", f) for _, f in entries[:1]] + entries[1:4]  # same records, another entry id
    with pytest.raises(ArchiveConflict):
        await archive.put_segment(ROOM, moved)
    assert await read_all(archive) == as_read(entries)


async def test_the_same_lines_compressed_otherwise_are_the_same_segment(tmp_path):
    archive = DirectoryArchive(tmp_path, fsync=False)
    entries = make_entries(1, 5)
    manifest = await archive.put_segment(ROOM, entries)
    lines = gzip.decompress(seg_path(archive, manifest).read_bytes())
    recompressed = rewrite(archive, manifest, gzip.compress(lines, compresslevel=1, mtime=12345))
    assert recompressed.sha256 != manifest.sha256

    assert await archive.put_segment(ROOM, entries) == recompressed
    await archive.verify_segment(ROOM, recompressed)


async def test_concurrent_puts_of_one_range_store_it_once(tmp_path):
    archives = [DirectoryArchive(tmp_path) for _ in range(4)]  # as several archiver instances would
    entries = make_entries(1, 30)
    manifests = await asyncio.gather(*(a.put_segment(ROOM, entries) for a in archives))
    assert all(m == manifests[0] for m in manifests)
    assert await archives[0].segments(ROOM) == [manifests[0]]
    await archives[1].verify_segment(ROOM, manifests[0])


# --- verify and damaged files ---------------------------------------------------------------------------------


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x40]) + data[middle + 1:]


def _append_garbage(data: bytes) -> bytes:
    return data + b"trailing garbage"


def _cut_trailer(data: bytes) -> bytes:
    return data[:-4]


@pytest.mark.parametrize("damage", [_truncate, _flip, _append_garbage, _cut_trailer, lambda d: b""],
                         ids=["truncated", "flipped_byte", "trailing_garbage", "no_trailer", "empty"])
async def test_a_damaged_segment_file_is_detected(tmp_path, damage):
    archive = DirectoryArchive(tmp_path, fsync=False)
    manifest = await archive.put_segment(ROOM, make_entries(1, 40))
    await archive.verify_segment(ROOM, manifest)
    path = seg_path(archive, manifest)
    path.write_bytes(damage(path.read_bytes()))

    with pytest.raises(ArchiveCorrupt):
        await archive.verify_segment(ROOM, manifest)
    with pytest.raises(ArchiveCorrupt):
        await read_all(archive)
    with pytest.raises(ArchiveCorrupt):  # the whole-file path replay_many takes
        await archive.read_room(ROOM)


@pytest.mark.parametrize("change", ["drop_line", "extra_line", "swap_lines", "wrong_type", "bad_base64",
                                    "not_a_line", "last_line_cut", "other_id"])
async def test_a_segment_whose_lines_disagree_with_its_manifest_fails_verify(tmp_path, change):
    """The file's checksum matches its manifest here (rewritten together): verify still reads every line."""
    archive = DirectoryArchive(tmp_path, fsync=False)
    manifest = await archive.put_segment(ROOM, make_entries(1, 6))
    lines = gzip.decompress(seg_path(archive, manifest).read_bytes()).splitlines(keepends=True)
    if change == "drop_line":
        del lines[2]
    elif change == "extra_line":
        lines.append(lines[-1].replace(b'"seq":6', b'"seq":7'))
    elif change == "swap_lines":
        lines[1], lines[2] = lines[2], lines[1]
    elif change == "wrong_type":  # the type field says participant_connected, the rec says connected
        lines[1] = lines[1].replace(b'"type":"connected","seq":2,"rec"',
                                    b'"type":"participant_connected","seq":2,"rec"')
    elif change == "bad_base64":
        lines[2] = re.sub(rb'"data_b64":"[^"]*"', b'"data_b64":"%%%"', lines[2])
    elif change == "not_a_line":
        lines[3] = b"hello\n"
    elif change == "last_line_cut":
        lines[-1] = lines[-1][:-1]
    elif change == "other_id":
        lines[0] = lines[0].replace(b"1700000000001-1", b"1700000000001-9")
    fixed = rewrite(archive, manifest, gzip.compress(b"".join(lines), mtime=0))

    with pytest.raises(ArchiveCorrupt):
        await archive.verify_segment(ROOM, fixed)
    if change != "wrong_type":  # entries() and read_room() hand fields on as they are: consumers decode records
        with pytest.raises(ArchiveCorrupt):
            await read_all(archive)
        with pytest.raises(ArchiveCorrupt):
            await archive.read_room(ROOM)


async def test_verify_compares_the_stored_manifest_and_finds_a_missing_file(tmp_path):
    archive = DirectoryArchive(tmp_path, fsync=False)
    manifest = await archive.put_segment(ROOM, make_entries(1, 3))
    with pytest.raises(ArchiveCorrupt, match="differs"):
        await archive.verify_segment(ROOM, msgspec.structs.replace(manifest, archived_at=1.0))
    seg_path(archive, manifest).unlink()
    with pytest.raises(ArchiveCorrupt, match="missing"):
        await archive.verify_segment(ROOM, manifest)
    with pytest.raises(ArchiveCorrupt, match="missing"):
        await read_all(archive)


async def test_unreadable_manifests_and_missing_segments_are_corrupt(tmp_path):
    archive = DirectoryArchive(tmp_path, fsync=False)
    await archive.put_segment(ROOM, make_entries(1, 3))
    await archive.put_segment(ROOM, make_entries(4, 6))
    room_dir = archive.room_dir(ROOM)
    (room_dir / manifest_name(4, 6)).unlink()
    (room_dir / manifest_name(7, 9)).write_bytes((room_dir / manifest_name(1, 3)).read_bytes())  # says 1..3
    with pytest.raises(ArchiveCorrupt, match="holds seqs 1..3"):
        await archive.segments(ROOM)
    (room_dir / manifest_name(7, 9)).write_bytes(b'{"format": "rs-archive/9"}')
    with pytest.raises(ArchiveCorrupt):
        await archive.segments(ROOM)
    (room_dir / manifest_name(7, 9)).unlink()
    # a segment missing in the middle (its manifest kept) breaks the run
    seg_2 = encode_segment(ROOM, make_entries(7, 9)).manifest
    (room_dir / manifest_name(7, 9)).write_bytes(encode_manifest(seg_2))
    with pytest.raises(ArchiveCorrupt, match="followed by"):
        await read_all(archive)


# --- interrupted writes -----------------------------------------------------------------------------------------


async def test_an_interrupted_write_leaves_files_that_are_ignored_replaced_and_cleaned(tmp_path, monkeypatch):
    archive = DirectoryArchive(tmp_path)
    entries = make_entries(1, 8)
    await archive.put_segment(ROOM, entries[:4])
    room_dir = archive.room_dir(ROOM)

    real_write = DirectoryArchive._write_file

    def crash_at_the_manifest(self, directory, name, data):
        if name.endswith(".json"):
            (directory / f".{name}.0badc0de.tmp").write_bytes(data[:10])  # half a manifest in its temp file
            raise SystemExit("killed")
        real_write(self, directory, name, data)

    monkeypatch.setattr(DirectoryArchive, "_write_file", crash_at_the_manifest)
    with pytest.raises(SystemExit):
        await archive.put_segment(ROOM, entries[4:])
    monkeypatch.undo()
    (room_dir / f".{segment_name(5, 8)}.12345678.tmp").write_bytes(b"half a segment")
    (room_dir / "README.txt").write_text("an operator's note")
    assert (room_dir / segment_name(5, 8)).exists()  # written, but without its manifest it does not count

    assert [(m.first_seq, m.last_seq) for m in await archive.segments(ROOM)] == [(1, 4)]
    assert await archive.last_seq(ROOM) == 4
    assert await read_all(archive) == as_read(entries[:4])

    # a room with nothing but the remains of a first write is not an archived room
    other = "other room"
    monkeypatch.setattr(DirectoryArchive, "_write_file", crash_at_the_manifest)
    with pytest.raises(SystemExit):
        await archive.put_segment(other, make_entries(1, 2, other))
    monkeypatch.undo()
    assert await archive.rooms() == [ROOM]
    assert await archive.cleanup(other) == [f".{manifest_name(1, 2)}.0badc0de.tmp", segment_name(1, 2)]

    # redoing the write replaces the stray segment; cleanup then takes the temporary files only
    (room_dir / segment_name(5, 8)).write_bytes(b"a stray segment with other bytes")
    manifest = await archive.put_segment(ROOM, entries[4:])
    await archive.verify_segment(ROOM, manifest)
    assert await archive.cleanup(ROOM) == [f".{manifest_name(5, 8)}.0badc0de.tmp",
                                           f".{segment_name(5, 8)}.12345678.tmp"]
    assert await archive.cleanup(ROOM) == []
    assert sorted(os.listdir(room_dir)) == sorted([".lock", "README.txt", manifest_name(1, 4), manifest_name(5, 8),
                                                   segment_name(1, 4), segment_name(5, 8)])
    assert await read_all(archive) == as_read(entries)
    assert await archive.cleanup("never archived") == []


async def test_cleanup_removes_a_segment_left_without_its_manifest(tmp_path):
    archive = DirectoryArchive(tmp_path, fsync=False)
    await archive.put_segment(ROOM, make_entries(1, 2))
    stray = archive.room_dir(ROOM) / segment_name(3, 9)
    stray.write_bytes(encode_segment(ROOM, make_entries(3, 9)).data)
    assert await archive.cleanup(ROOM) == [segment_name(3, 9)]
    assert not stray.exists() and await archive.last_seq(ROOM) == 2


# --- room names -------------------------------------------------------------------------------------------------

GARBAGE_NAMES = [
    "a b", "a:b", "a/b", "/abs", "../../etc/passwd", "..", ".", "...", ".hidden", "{r}", "rs:room:{x}:events",
    "%41", "%2E", "%2E%2E", "~", "a~b", "*", "?", "a\nb\tc\r", "\x00nul", "\\", "-rf", " ", "ünï cødé 🎉",
    "名前", "CON", "x" * 200, "x" * 201, "é" * 66, "é" * 67,
]


async def test_any_room_name_gets_its_own_directory_inside_the_archive(tmp_path):
    root = tmp_path / "archive"
    archive = DirectoryArchive(root, fsync=False)
    for n, room in enumerate(GARBAGE_NAMES):
        await archive.put_segment(room, make_entries(1, 2, room, tag=str(n)))

    assert await archive.rooms() == sorted(GARBAGE_NAMES)
    assert len({room_dir_name(r) for r in GARBAGE_NAMES}) == len(GARBAGE_NAMES)
    for entry in os.scandir(root):
        assert entry.is_dir() and entry.name not in (".", "..") and len(entry.name.encode()) <= 200
    assert len(os.listdir(root)) == len(GARBAGE_NAMES)
    assert not any(p.name.startswith("seg-") for p in tmp_path.iterdir())  # nothing escaped the archive
    for n, room in enumerate(GARBAGE_NAMES):
        assert archive.room_dir(room).parent == root
        got = await read_all(archive, room)
        assert got == as_read(make_entries(1, 2, room, tag=str(n))), room
        assert decode_entry(got[0][1]).room == room


async def test_a_very_long_unicode_name_is_shortened_and_kept_in_the_manifests(tmp_path):
    archive = DirectoryArchive(tmp_path, fsync=False)
    long_name = "Besprechungsraum für Ärzte 会议室 🎉 / : { } " * 12
    similar = long_name + "another"  # the same first 150 encoded characters
    for room in (long_name, similar):
        await archive.put_segment(room, make_entries(1, 2, room))
        await archive.put_segment(room, make_entries(3, 3, room))

    name = room_dir_name(long_name)
    assert re.fullmatch(r"[A-Za-z0-9._~%-]{150}~[0-9a-f]{16}", name)
    assert name == f"{encode_name(long_name)[:150]}~{hashlib.sha256(long_name.encode()).hexdigest()[:16]}"
    assert room_dir_name(similar) != name and room_dir_name(similar)[:150] == name[:150]
    assert sorted(os.listdir(tmp_path)) == sorted([name, room_dir_name(similar)])
    assert all(m.room == long_name for m in await archive.segments(long_name))
    assert await archive.rooms() == sorted([long_name, similar])
    assert [decode_entry(f).room for _, f in await read_all(archive, long_name)] == [long_name] * 3

    # a short name that spells a shortened one does not share its directory
    impostor = decode_name(name)
    assert len(impostor) < 200 and room_dir_name(impostor) != name
    await archive.put_segment(impostor, make_entries(1, 1, impostor))
    assert await archive.rooms() == sorted([long_name, similar, impostor])
    assert len(await read_all(archive, long_name)) == 3 and len(await read_all(archive, impostor)) == 1


async def test_foreign_directories_are_not_rooms_and_a_room_directory_holds_one_room(tmp_path):
    archive = DirectoryArchive(tmp_path, fsync=False)
    await archive.put_segment(ROOM, make_entries(1, 2))
    manifest_file = archive.room_dir(ROOM) / manifest_name(1, 2)
    (tmp_path / "notes.txt").write_text("not a room")
    (tmp_path / "empty").mkdir()
    for garbage in ("%zz", "%FF", "lower%2e", "x" * 150 + "~" + "0" * 16):  # not an encoding, or a bad manifest
        (tmp_path / garbage).mkdir()
        (tmp_path / garbage / manifest_file.name).write_bytes(manifest_file.read_bytes())
    assert await archive.rooms() == [ROOM]

    os.rename(archive.room_dir(ROOM), archive.room_dir("elsewhere"))
    with pytest.raises(ArchiveConflict, match="belongs to room"):
        await archive.segments("elsewhere")
    assert await archive.rooms() == ["elsewhere"]  # listed by its directory name; reading it says what is wrong


# --- no file I/O on the event loop ------------------------------------------------------------------------------

OFF_THE_LOOP = """
    import asyncio, json, os, sys, threading
    sys.path.insert(0, "tests")
    from test_archive_store import make_entries
    from eventstore.archive import DirectoryArchive

    directory = sys.argv[1]
    on_loop = []
    EVENTS = {"open", "os.rename", "os.remove", "os.listdir", "os.scandir", "os.mkdir", "os.truncate"}

    def hook(event, args):
        if threading.current_thread() is threading.main_thread() and event in EVENTS and args:
            path = os.fspath(args[0]) if isinstance(args[0], (str, os.PathLike)) else ""
            if path.startswith(directory):
                on_loop.append([event, path])

    async def main():
        sys.addaudithook(hook)
        archive = DirectoryArchive(directory, chunk_lines=2)
        first = await archive.put_segment("r", make_entries(1, 5, "r"))
        await archive.put_segment("r", make_entries(6, 9, "r"))
        await archive.put_segment("r", make_entries(1, 5, "r"))
        seqs = [int(f[b"seq"]) async for _, f in archive.entries("r", since=2)]
        await archive.verify_segment("r", first)
        done = [await archive.last_seq("r"), await archive.rooms(), await archive.cleanup("r")]
        print(json.dumps({"on_loop": on_loop, "seqs": seqs, "done": done}))

    asyncio.run(main())
"""


def test_no_archive_file_operation_runs_on_the_event_loop_thread(tmp_path):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(OFF_THE_LOOP), str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"on_loop": [], "seqs": list(range(3, 10)), "done": [9, ["r"], []]}
