"""The archive's file format, alone (bytes in, bytes out): segment lines and manifests, names, and reading a
segment back with its checks. :mod:`eventstore.archive` stores segments in a directory with it; an object store
can share it. The format and why it is gzip JSON Lines: see :mod:`eventstore.archive`.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import itertools
import logging
import re
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

import msgspec

from .codec import DecodeError, decode_entry
from .keys import encode_name

log = logging.getLogger("eventstore")

FORMAT = "rs-archive/1"

Entry = tuple[bytes | str, Mapping[bytes, bytes]]
"""A stream entry as redis-py's XRANGE returns it: (entry id, fields)."""

ArchivedEntry = tuple[str, dict[bytes, bytes]]
"""An entry read back: its id as text and its fields exactly as the stream had them."""

_MAX_DIR_NAME = 200  # bytes; longer encodings are shortened (file systems allow 255)
_KEPT_PREFIX = 150
_HASHED_DIR = re.compile(r".{150}~[0-9a-f]{16}")
_MANIFEST_NAME = re.compile(r"seg-(\d{20})-(\d{20})\.json")
_SEGMENT_NAME = re.compile(r"seg-(\d{20})-(\d{20})\.jsonl\.gz")
_TEMP_NAME = re.compile(r"\.seg-\d{20}-\d{20}\.(?:json|jsonl\.gz)\.[0-9a-f]{8}\.tmp")
_ENTRY_ID = re.compile(r"\d+-\d+")
_FIELDS = frozenset((b"type", b"seq", b"rec", b"data"))
_CHUNK_BYTES = 1 << 20  # a chunk of entries() stops after this many uncompressed bytes
_COPY = 1 << 16


class ArchiveError(Exception):
    """The archive cannot do what was asked (base of every archive error; file-system errors come as this)."""


class ArchiveGap(ArchiveError):
    """Entries that would leave a gap or an overlap: an empty list, seqs that are not consecutive, or a first seq
    that does not follow the room's last archived one."""


class ArchiveConflict(ArchiveError):
    """A range that is already archived with other content (or a room directory that holds another room)."""


class ArchiveCorrupt(ArchiveError):
    """Stored data that does not read back as written: a bad manifest, a missing, truncated or altered segment,
    a line that is not an entry."""


class ArchiveInvalidEntry(ArchiveError):
    """An entry that could not come back byte for byte, or that is not a record (verify would refuse it)."""


class SegmentManifest(msgspec.Struct, frozen=True, kw_only=True):
    """What a segment holds: the room, the seq range and entry count, the SHA-256 and size of the ``.jsonl.gz``
    file, when it was archived (Unix seconds), and the stream ids of its first and last entries."""

    format: str = FORMAT
    room: str
    first_seq: int
    last_seq: int
    count: int
    sha256: str
    bytes: int
    archived_at: float
    first_id: str
    last_id: str


class _Line(msgspec.Struct, omit_defaults=True):
    """One line of a segment. ``rec`` is raw JSON: written and read back verbatim."""

    id: str
    type: str
    seq: int
    rec: msgspec.Raw
    data_b64: str | None = None


_line_encoder = msgspec.json.Encoder()
_line_decoder = msgspec.json.Decoder(_Line)
_lines_decoder = msgspec.json.Decoder(list[_Line])
_manifest_decoder = msgspec.json.Decoder(SegmentManifest)


@dataclass(frozen=True, slots=True)
class EncodedSegment:
    """A segment ready to store: its ``.jsonl.gz`` bytes, its manifest, and the SHA-256 of the uncompressed
    lines (to recognize the same content compressed differently, e.g. by another zlib version)."""

    data: bytes
    manifest: SegmentManifest
    content_sha256: str


# --- names ----------------------------------------------------------------------------------------------------


def room_dir_name(room: str) -> str:
    """The directory name of a room: its key encoding, made safe as a path component and kept under 200 bytes.

    Injective: ``.``/``..`` become ``%2E``/``%2E%2E`` and a short encoding that looks like a shortened one gets
    its ``~`` as ``%7E``; :func:`encode_name` never produces either escape, and both decode to the same name.
    """
    encoded = encode_name(room)
    if len(encoded) > _MAX_DIR_NAME:
        digest = hashlib.sha256(room.encode("utf-8")).hexdigest()[:16]
        return f"{encoded[:_KEPT_PREFIX]}~{digest}"
    if encoded in (".", ".."):
        return encoded.replace(".", "%2E")
    if _HASHED_DIR.fullmatch(encoded):
        return f"{encoded[:_KEPT_PREFIX]}%7E{encoded[_KEPT_PREFIX + 1:]}"
    return encoded


def segment_name(first_seq: int, last_seq: int) -> str:
    return f"seg-{first_seq:020d}-{last_seq:020d}.jsonl.gz"


def manifest_name(first_seq: int, last_seq: int) -> str:
    return f"seg-{first_seq:020d}-{last_seq:020d}.json"


# --- the format: entries to bytes ---------------------------------------------------------------------------


def _entry_id_text(entry_id: bytes | str) -> str:
    text = entry_id.decode("ascii", "replace") if isinstance(entry_id, bytes) else str(entry_id)
    if not _ENTRY_ID.fullmatch(text):
        raise ArchiveInvalidEntry(f"not a stream entry id: {entry_id!r}")
    return text


def _line_of(entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> _Line:
    """The line for one entry. Refuses (:class:`ArchiveInvalidEntry`) what would not come back byte for byte or
    would not pass :meth:`ArchiveStore.verify_segment`: other fields, a record that does not decode, a ``seq``
    field that is not plain decimal, a ``rec`` that is not one compact line of JSON object."""
    eid = _entry_id_text(entry_id)
    extra = set(fields) - _FIELDS
    if extra:
        raise ArchiveInvalidEntry(f"entry {eid} has fields the archive does not keep: {sorted(map(repr, extra))}")
    try:
        decode_entry(fields)
    except DecodeError as exc:
        raise ArchiveInvalidEntry(f"entry {eid} is not a record ({exc})") from None
    seq_raw = fields[b"seq"]
    seq = int(seq_raw)
    if seq < 1 or str(seq).encode() != seq_raw:
        raise ArchiveInvalidEntry(f"entry {eid}: seq field {seq_raw[:40]!r} is not a positive decimal number")
    rec = fields[b"rec"]
    if not (rec.startswith(b"{") and rec.endswith(b"}")) or b"\n" in rec or b"\r" in rec:
        raise ArchiveInvalidEntry(f"entry {eid}: rec is not a one-line JSON object; it would not read back as is")
    data = fields.get(b"data")
    b64 = None if data is None else base64.b64encode(data).decode("ascii")
    return _Line(eid, fields[b"type"].decode("ascii"), seq, msgspec.Raw(rec), b64)


def _check_consecutive(lines: Sequence[_Line]) -> None:
    for before, after in itertools.pairwise(lines):
        if after.seq != before.seq + 1:
            raise ArchiveGap(f"entries are not consecutive: seq {after.seq} (entry {after.id}) follows "
                             f"seq {before.seq} (entry {before.id})")


def encode_segment(room: str, entries: Sequence[Entry]) -> EncodedSegment:
    """Entries (in seq order, no gaps, at least one) as a segment's bytes and manifest. CPU work: call it off
    the event loop. Compression is deterministic (no time stamp nor file name in the gzip header), so the same
    entries give the same bytes on the same zlib."""
    if not entries:
        raise ArchiveGap(f"room {room!r}: nothing to archive (no entries)")
    lines = [_line_of(entry_id, fields) for entry_id, fields in entries]
    _check_consecutive(lines)
    raw = b"".join([_line_encoder.encode(line) + b"\n" for line in lines])
    data = gzip.compress(raw, compresslevel=6, mtime=0)
    manifest = SegmentManifest(
        room=room, first_seq=lines[0].seq, last_seq=lines[-1].seq, count=len(lines),
        sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), archived_at=time.time(),
        first_id=lines[0].id, last_id=lines[-1].id)
    return EncodedSegment(data, manifest, hashlib.sha256(raw).hexdigest())


def encode_manifest(manifest: SegmentManifest) -> bytes:
    """The manifest as indented JSON (it is read by people too)."""
    return msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"


def decode_manifest(data: bytes, where: str) -> SegmentManifest:
    """A manifest read back and checked in itself (format, range and count agree). Raises ArchiveCorrupt."""
    try:
        manifest = _manifest_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ArchiveCorrupt(f"{where}: not a segment manifest ({exc})") from None
    if manifest.format != FORMAT:
        raise ArchiveCorrupt(f"{where}: format {manifest.format!r}, this version reads {FORMAT!r}")
    if not 1 <= manifest.first_seq <= manifest.last_seq or manifest.count != manifest.last_seq - manifest.first_seq + 1:
        raise ArchiveCorrupt(f"{where}: seqs {manifest.first_seq}..{manifest.last_seq} and count {manifest.count} "
                             "do not agree")
    return manifest


# --- the format: bytes to entries ---------------------------------------------------------------------------


class _HashingReader:
    """A binary file that hashes and counts every byte read through it (what gzip reads is the whole file)."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self.sha256.update(chunk)
        self.size += len(chunk)
        return chunk


class SegmentReader:
    """Reads a segment's entries from its ``.jsonl.gz`` file a chunk at a time, checking them against the
    manifest as it goes: seqs consecutive from ``first_seq``, the first and last entry ids, the line count, and
    at the end the file's size and SHA-256 (gzip checks its own CRC). With ``check_records`` every line must
    also decode with :func:`eventstore.codec.decode_entry`. Entries with ``seq <= since`` are checked but not
    returned.

    Blocking: use it from a worker thread. ``read_chunk`` and ``close`` are serialized, so a ``close`` after a
    read whose caller was cancelled waits for that read to end.
    """

    def __init__(self, file: IO[bytes], manifest: SegmentManifest, *, where: str, since: int = 0,
                 check_records: bool = False) -> None:
        self.manifest = manifest
        self._file = file
        self._where = where
        self._since = since
        self._check_records = check_records
        self._hashing = _HashingReader(file)
        self._gz = gzip.GzipFile(fileobj=self._hashing, mode="rb")  # type: ignore[arg-type]
        self._next = manifest.first_seq
        self._lock = threading.Lock()
        self._closed = False

    def read_chunk(self, max_lines: int = 1024, max_bytes: int = _CHUNK_BYTES) -> tuple[list[ArchivedEntry], bool]:
        """The next entries (at most ``max_lines``, about ``max_bytes`` of lines) and whether the segment is done
        (then it has been checked to the end). Raises :class:`ArchiveCorrupt`."""
        with self._lock:
            if self._closed:
                raise ArchiveError(f"{self._where}: the segment reader is closed")
            out: list[ArchivedEntry] = []
            size = 0
            while len(out) < max_lines and size < max_bytes:
                raw = self._readline()
                if not raw:
                    self._finish()
                    return out, True
                size += len(raw)
                entry = self._entry(raw)
                if entry is not None:
                    out.append(entry)
            return out, False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            try:
                self._gz.close()
            finally:
                self._file.close()

    def _readline(self) -> bytes:
        try:
            return self._gz.readline()
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ArchiveCorrupt(f"{self._where}: not a complete gzip file ({exc or type(exc).__name__})") from None

    def _entry(self, raw: bytes) -> ArchivedEntry | None:
        """Check one line; its entry if it is after ``since``."""
        seq = self._next
        if seq > self.manifest.last_seq:
            raise ArchiveCorrupt(f"{self._where}: more lines than the manifest's {self.manifest.count}")
        if not raw.endswith(b"\n"):
            raise ArchiveCorrupt(f"{self._where}: the line of seq {seq} is cut short")
        try:
            line = _line_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise ArchiveCorrupt(f"{self._where}: the line of seq {seq} is not an entry ({exc})") from None
        if line.seq != seq:
            raise ArchiveCorrupt(f"{self._where}: seq {line.seq} where seq {seq} should be")
        self._check_id(line)
        self._next += 1
        if seq <= self._since and not self._check_records:
            return None
        fields = _fields_of(line, self._where, self._check_records)
        return (line.id, fields) if seq > self._since else None

    def _check_id(self, line: _Line) -> None:
        m = self.manifest
        if (line.seq == m.first_seq and line.id != m.first_id) or (line.seq == m.last_seq and line.id != m.last_id):
            raise ArchiveCorrupt(f"{self._where}: seq {line.seq} has entry id {line.id!r}, the manifest says otherwise")

    def _finish(self) -> None:
        """At the end of the entries: the count, then the file's size and checksum (read to its very end)."""
        m = self.manifest
        if self._next != m.last_seq + 1:
            raise ArchiveCorrupt(f"{self._where}: {self._next - m.first_seq} lines, the manifest says {m.count}")
        while self._hashing.read(_COPY):
            pass
        if self._hashing.size != m.bytes or self._hashing.sha256.hexdigest() != m.sha256:
            raise ArchiveCorrupt(f"{self._where}: {self._hashing.size} bytes with SHA-256 "
                                 f"{self._hashing.sha256.hexdigest()}, the manifest says {m.bytes} bytes, {m.sha256}")


def _fields_of(line: _Line, where: str, check_records: bool) -> dict[bytes, bytes]:
    """A line's entry fields as the stream had them."""
    fields = {b"type": line.type.encode(), b"seq": str(line.seq).encode(), b"rec": bytes(line.rec)}
    if line.data_b64 is not None:
        try:
            fields[b"data"] = base64.b64decode(line.data_b64, validate=True)
        except binascii.Error:
            raise ArchiveCorrupt(f"{where}: seq {line.seq}: data_b64 is not base64") from None
    if check_records:
        try:
            decode_entry(fields)
        except DecodeError as exc:
            raise ArchiveCorrupt(f"{where}: seq {line.seq} is not a record ({exc})") from None
    return fields


def decode_segment(data: bytes, manifest: SegmentManifest, *, where: str, since: int = 0) -> list[ArchivedEntry]:
    """A whole segment file's entries after ``since``, with the checks :class:`SegmentReader` makes (size and
    SHA-256, gzip's CRC, consecutive seqs, first and last ids, the count), in a few calls over the whole file
    instead of one per line: the fast path for reading a room at once. Raises :class:`ArchiveCorrupt`."""
    m = manifest
    if len(data) != m.bytes or hashlib.sha256(data).hexdigest() != m.sha256:
        raise ArchiveCorrupt(f"{where}: {len(data)} bytes whose SHA-256 is not the manifest's ({m.bytes} bytes)")
    try:
        text = gzip.decompress(data)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ArchiveCorrupt(f"{where}: not a complete gzip file ({exc or type(exc).__name__})") from None
    if not text.endswith(b"\n"):
        raise ArchiveCorrupt(f"{where}: the last line is cut short")
    try:  # JSON text holds no raw newline, so the lines joined by commas are a JSON array of them
        lines = _lines_decoder.decode(b"[" + text[:-1].replace(b"\n", b",") + b"]")
    except msgspec.DecodeError as exc:
        raise ArchiveCorrupt(f"{where}: a line is not an entry ({exc})") from None
    if len(lines) != m.count or [line.seq for line in lines] != list(range(m.first_seq, m.last_seq + 1)):
        raise ArchiveCorrupt(f"{where}: {len(lines)} lines whose seqs are not {m.first_seq}..{m.last_seq}")
    if lines[0].id != m.first_id or lines[-1].id != m.last_id:
        raise ArchiveCorrupt(f"{where}: the first or last entry id is not the manifest's")
    return [(line.id, _fields_of(line, where, False)) for line in lines if line.seq > since]


def _check_contiguous(room: str, manifests: Sequence[SegmentManifest]) -> None:
    for before, after in itertools.pairwise(manifests):
        if after.first_seq != before.last_seq + 1:
            raise ArchiveCorrupt(f"room {room!r}: segment {before.first_seq}..{before.last_seq} is followed by "
                                 f"{after.first_seq}..{after.last_seq}")


