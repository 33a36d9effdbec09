"""Archived rooms: a room's stream entries moved out of Redis into gzip-compressed JSON Lines files on disk.

Why gzip and JSON Lines: the operator who opens the archive a year from now may have neither room-supervisor nor
Redis at hand. Both formats are read everywhere without our code: ``zcat seg-*.jsonl.gz | jq .rec`` prints the
records, ``zgrep`` finds one, and Python's ``gzip`` and ``json`` read a segment in three lines. zstd compresses
better and faster but is not everywhere yet (no stdlib module before Python 3.14, no ``zstdcat`` on many hosts).

Layout (:class:`DirectoryArchive`)::

    <archive_dir>/<room dir>/seg-<first seq>-<last seq>.jsonl.gz   the entries, one JSON object per line
    <archive_dir>/<room dir>/seg-<first seq>-<last seq>.json       its manifest (SegmentManifest as JSON)
    <archive_dir>/<room dir>/.lock                                 writers of the room take an flock on it

Sequence numbers in file names have 20 digits, so names sort in seq order. The room directory is the room name as
:func:`eventstore.keys.encode_name` encodes it (any name becomes ``[A-Za-z0-9._~%-]``; ``.`` and ``..`` have their
dots escaped). An encoding longer than 200 bytes becomes its first 150 characters, ``~`` and 16 hex digits of the
SHA-256 of the UTF-8 name; every manifest holds the full room name, so the name is never lost. Each line is one
stream entry, in seq order::

    {"id":"1700000000000-0","type":"connected","seq":1,"rec":{"type":"connected","seq":1,...}}
    {"id":"1700000000001-0","type":"data_received","seq":2,"rec":{...,"data":""},"data_b64":"aGk="}

``rec`` is the entry's ``rec`` field written verbatim (it is JSON text), so the archive keeps the bytes the stream
held; ``data_b64`` is the entry's raw ``data`` field in base64, present only when the entry has one. Lines end
with ``\n`` and hold no other line break (``\r`` too is refused), but JSON strings may hold U+2028 raw: split on
``\n`` (``for line in file``, ``jq``), not with ``str.splitlines``.

Crash safety: each file is written to a temporary file in the room directory (``.<name>.<8 hex>.tmp``), fsynced,
renamed into place, and the directory fsynced; the segment first, then its manifest. A segment counts only once
its manifest exists: a crash leaves at most a temporary file or a segment without a manifest (which a shell glob
like ``seg-*.jsonl.gz`` does see), and the next write of the same range replaces it; :meth:`ArchiveStore.cleanup`
removes both. Writing a range that is already archived with the same content returns the stored manifest (an
archiver redoing a step after a crash); other content for an archived range is an :class:`ArchiveConflict`.
Writers of a room (threads, or processes on one host) hold an exclusive ``flock`` on its ``.lock``; readers
need none, they only trust manifests.

No file I/O runs on the event loop: each method does its work in a worker thread (``asyncio.to_thread``), and
:meth:`DirectoryArchive.entries` reads a segment a chunk at a time, never a whole segment into memory.

:func:`encode_segment` and :class:`SegmentReader` are the format alone (bytes in, bytes out), for other stores
(an object store) to share.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
import gzip
import hashlib
import logging
import os
import secrets
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

from .keys import decode_name
from .spool import _fsync_dir
from .archive_format import (  # noqa: F401 - the format's public names are re-exported: one import for users
    ArchiveConflict,
    ArchiveCorrupt,
    ArchiveError,
    ArchiveGap,
    ArchiveInvalidEntry,
    ArchivedEntry,
    EncodedSegment,
    Entry,
    FORMAT,
    SegmentManifest,
    SegmentReader,
    _COPY,
    _HASHED_DIR,
    _MANIFEST_NAME,
    _SEGMENT_NAME,
    _TEMP_NAME,
    _check_contiguous,
    decode_manifest,
    decode_segment,
    encode_manifest,
    encode_segment,
    manifest_name,
    room_dir_name,
    segment_name,
)

log = logging.getLogger("eventstore")


# --- the interface ----------------------------------------------------------------------------------------------


class ArchiveStore(abc.ABC):
    """Where archived segments live. Small on purpose, so an object store can follow the directory.

    A room's archive is a run of segments with consecutive seqs; a segment counts once its manifest is stored.
    """

    @abc.abstractmethod
    async def put_segment(self, room: str, entries: Sequence[Entry]) -> SegmentManifest:
        """Archive ``entries`` (in seq order, no gaps) as one segment and return its manifest.

        The first seq must follow the room's last archived one (any seq when nothing is archived yet), else
        :class:`ArchiveGap` (also for an empty list or a gap). Re-putting an archived range with the same
        content returns the stored manifest; other content is :class:`ArchiveConflict`. Entries that would not
        read back byte for byte raise :class:`ArchiveInvalidEntry`.
        """

    @abc.abstractmethod
    async def segments(self, room: str) -> list[SegmentManifest]:
        """The room's complete segments, by first seq (none: an empty list)."""

    async def last_seq(self, room: str) -> int:
        """The room's last archived seq, 0 if nothing is archived."""
        return max((m.last_seq for m in await self.segments(room)), default=0)

    @abc.abstractmethod
    def entries(self, room: str, since: int = 0) -> AsyncIterator[ArchivedEntry]:
        """The archived entries with ``seq > since`` in order, across segments: (entry id, fields as the stream
        had them). Raises :class:`ArchiveCorrupt` when what is read does not match its manifest."""

    async def read_room(self, room: str, since: int = 0) -> list[ArchivedEntry]:
        """All of :meth:`entries` at once (a call's room is small; a store may read it in one go)."""
        return [entry async for entry in self.entries(room, since)]

    @abc.abstractmethod
    async def verify_segment(self, room: str, manifest: SegmentManifest) -> None:
        """Re-read a stored segment: its stored manifest must equal ``manifest``, and the file must have its size
        and SHA-256, ``count`` lines with consecutive seqs, and records that decode. Raises
        :class:`ArchiveCorrupt`."""

    @abc.abstractmethod
    async def rooms(self) -> list[str]:
        """The names of the rooms with at least one complete segment, sorted."""

    @abc.abstractmethod
    async def cleanup(self, room: str) -> list[str]:
        """Remove what interrupted writes left in the room's archive; the names removed."""


# --- a directory ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _room_lock(room_dir: Path) -> Iterator[None]:
    """Exclusive flock on the room's ``.lock``: one writer (or cleanup) per room at a time, across processes."""
    fd = os.open(room_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _os_errors(what: str) -> Iterator[None]:
    """File-system errors as :class:`ArchiveError` (typed, with what was being done)."""
    try:
        yield
    except OSError as exc:
        raise ArchiveError(f"{what}: {exc}") from exc


def _content_sha256(path: Path) -> str:
    """SHA-256 of a segment's uncompressed lines."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(_COPY):
                digest.update(chunk)
    except FileNotFoundError:
        raise ArchiveCorrupt(f"{path} is missing (its manifest exists)") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ArchiveCorrupt(f"{path}: not a complete gzip file ({exc})") from None
    return digest.hexdigest()


class DirectoryArchive(ArchiveStore):
    """Segments as files: ``<path>/<room dir>/seg-<first>-<last>.jsonl.gz`` and ``.json`` (see the module).

    Nothing touches the disk until it is used. ``fsync=False`` skips the fsyncs (tests, throwaway archives);
    ``chunk_lines`` bounds the entries :meth:`entries` reads per trip to its worker thread.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True, chunk_lines: int = 1024) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.chunk_lines = chunk_lines

    def room_dir(self, room: str) -> Path:
        return self.path / room_dir_name(room)

    async def put_segment(self, room: str, entries: Sequence[Entry]) -> SegmentManifest:
        return await asyncio.to_thread(self._put, room, list(entries))

    async def segments(self, room: str) -> list[SegmentManifest]:
        return await asyncio.to_thread(self._segments, room)

    async def entries(self, room: str, since: int = 0) -> AsyncIterator[ArchivedEntry]:
        manifests = await self.segments(room)
        _check_contiguous(room, manifests)
        for manifest in manifests:
            if manifest.last_seq <= since:
                continue
            reader = await asyncio.to_thread(self._open_segment, room, manifest, since, False)
            try:
                done = False
                while not done:
                    chunk, done = await asyncio.to_thread(reader.read_chunk, self.chunk_lines)
                    for entry in chunk:
                        yield entry
            finally:
                await asyncio.to_thread(reader.close)

    async def read_room(self, room: str, since: int = 0) -> list[ArchivedEntry]:
        """Every archived entry after ``since``, read and checked in one worker thread (replay_many reads many
        rooms side by side this way: one thread hop per room instead of several per segment)."""
        return await asyncio.to_thread(self._read_room, room, since)

    def _read_room(self, room: str, since: int) -> list[ArchivedEntry]:
        manifests = self._segments(room)
        _check_contiguous(room, manifests)
        out: list[ArchivedEntry] = []
        for manifest in manifests:
            if manifest.last_seq <= since:
                continue
            path = self.room_dir(room) / segment_name(manifest.first_seq, manifest.last_seq)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise ArchiveCorrupt(f"{path} is missing (its manifest exists)") from None
            except OSError as exc:
                raise ArchiveError(f"cannot read {path}: {exc}") from exc
            out += decode_segment(data, manifest, where=str(path), since=since)
        return out

    async def verify_segment(self, room: str, manifest: SegmentManifest) -> None:
        await asyncio.to_thread(self._verify, room, manifest)

    async def rooms(self) -> list[str]:
        return await asyncio.to_thread(self._rooms)

    async def cleanup(self, room: str) -> list[str]:
        return await asyncio.to_thread(self._cleanup, room)

    # --- worker thread ------------------------------------------------------------------------------------

    def _put(self, room: str, entries: list[Entry]) -> SegmentManifest:
        encoded = encode_segment(room, entries)
        new = encoded.manifest
        room_dir = self.room_dir(room)
        with _os_errors(f"cannot archive room {room!r} in {room_dir}"):
            self._make_dirs(room_dir)
            with _room_lock(room_dir):
                manifests = self._manifests(room, room_dir)
                for stored in manifests:
                    if (stored.first_seq, stored.last_seq) == (new.first_seq, new.last_seq):
                        return self._same_or_conflict(room_dir, stored, encoded)
                last = max((m.last_seq for m in manifests), default=0)
                if manifests and new.first_seq != last + 1:
                    raise ArchiveGap(f"room {room!r}: archived up to seq {last}, refusing seqs "
                                     f"{new.first_seq}..{new.last_seq}")
                self._write_file(room_dir, segment_name(new.first_seq, new.last_seq), encoded.data)
                self._write_file(room_dir, manifest_name(new.first_seq, new.last_seq), encode_manifest(new))
                return new

    def _same_or_conflict(self, room_dir: Path, stored: SegmentManifest, encoded: EncodedSegment) -> SegmentManifest:
        """A re-put of an archived range: the stored manifest when the content is the same, else a conflict."""
        new = encoded.manifest
        if stored.count == new.count and stored.sha256 == new.sha256:
            return stored
        path = room_dir / segment_name(stored.first_seq, stored.last_seq)
        if stored.count == new.count and _content_sha256(path) == encoded.content_sha256:
            return stored  # the same lines, compressed differently (another zlib)
        raise ArchiveConflict(f"{path}: seqs {new.first_seq}..{new.last_seq} are archived with other content")

    def _make_dirs(self, room_dir: Path) -> None:
        if room_dir.is_dir():
            return
        new_root = not self.path.is_dir()
        self.path.mkdir(parents=True, exist_ok=True)
        room_dir.mkdir(exist_ok=True)
        if self.fsync:
            if new_root:
                _fsync_dir(self.path.parent)
            _fsync_dir(self.path)

    def _write_file(self, directory: Path, name: str, data: bytes) -> None:
        """``data`` as ``directory/name``, whole or not at all: a temporary file, fsynced, renamed over."""
        tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, directory / name)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        if self.fsync:
            _fsync_dir(directory)

    def _segments(self, room: str) -> list[SegmentManifest]:
        room_dir = self.room_dir(room)
        with _os_errors(f"cannot read the archive of room {room!r} in {room_dir}"):
            return self._manifests(room, room_dir)

    def _manifests(self, room: str | None, room_dir: Path) -> list[SegmentManifest]:
        """The manifests in ``room_dir`` by first seq, each checked against its name and (unless None) ``room``."""
        try:
            names = sorted(n for n in os.listdir(room_dir) if _MANIFEST_NAME.fullmatch(n))
        except FileNotFoundError:
            return []
        return [self._load_manifest(room_dir / name, room) for name in names]

    def _load_manifest(self, path: Path, room: str | None) -> SegmentManifest:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArchiveCorrupt(f"{path} is missing") from None
        manifest = decode_manifest(data, str(path))
        if path.name != manifest_name(manifest.first_seq, manifest.last_seq):
            raise ArchiveCorrupt(f"{path}: holds seqs {manifest.first_seq}..{manifest.last_seq}")
        if room is not None and manifest.room != room:
            raise ArchiveConflict(f"{path} belongs to room {manifest.room!r}, not {room!r}")
        return manifest

    def _open_segment(self, room: str, manifest: SegmentManifest, since: int, check_records: bool) -> SegmentReader:
        path = self.room_dir(room) / segment_name(manifest.first_seq, manifest.last_seq)
        try:
            file = open(path, "rb")  # noqa: SIM115 - the reader owns it and closes it
        except FileNotFoundError:
            raise ArchiveCorrupt(f"{path} is missing (its manifest exists)") from None
        except OSError as exc:
            raise ArchiveError(f"cannot read {path}: {exc}") from exc
        return SegmentReader(file, manifest, where=str(path), since=since, check_records=check_records)

    def _verify(self, room: str, manifest: SegmentManifest) -> None:
        path = self.room_dir(room) / manifest_name(manifest.first_seq, manifest.last_seq)
        with _os_errors(f"cannot verify {path}"):
            stored = self._load_manifest(path, room)
            if stored != manifest:
                raise ArchiveCorrupt(f"{path}: the stored manifest differs from {manifest!r}")
            reader = self._open_segment(room, stored, 0, True)
            try:
                while not reader.read_chunk(self.chunk_lines)[1]:
                    pass
            finally:
                reader.close()

    def _rooms(self) -> list[str]:
        with _os_errors(f"cannot list the archive {self.path}"):
            try:
                dirs = [e.name for e in os.scandir(self.path) if e.is_dir(follow_symlinks=False)]
            except FileNotFoundError:
                return []
            return sorted(room for name in dirs if (room := self._room_of(name)) is not None)

    def _room_of(self, name: str) -> str | None:
        """The room whose directory is ``name``, if it has a complete segment (None for other directories)."""
        manifests = sorted(n for n in os.listdir(self.path / name) if _MANIFEST_NAME.fullmatch(n))
        if not manifests:
            return None
        try:
            if _HASHED_DIR.fullmatch(name):
                room = self._load_manifest(self.path / name / manifests[0], None).room
            else:
                room = decode_name(name)
            if room_dir_name(room) == name:
                return room
        except (ValueError, ArchiveCorrupt) as exc:
            log.warning("archive %s: directory %r is not a room's (%s)", self.path, name, exc)
            return None
        log.warning("archive %s: directory %r is not a room's", self.path, name)
        return None

    def _cleanup(self, room: str) -> list[str]:
        room_dir = self.room_dir(room)
        if not room_dir.is_dir():
            return []
        with _os_errors(f"cannot clean up {room_dir}"), _room_lock(room_dir):
            names = set(os.listdir(room_dir))
            stray = sorted(n for n in names if _TEMP_NAME.fullmatch(n) or (
                _SEGMENT_NAME.fullmatch(n) and n.removesuffix(".jsonl.gz") + ".json" not in names))
            for name in stray:
                (room_dir / name).unlink()
            if stray and self.fsync:
                _fsync_dir(room_dir)
            return stray
