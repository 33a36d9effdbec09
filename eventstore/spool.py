"""A local append-only spool file for batches that could not reach Redis.

Frame format: 4-byte big-endian payload length, 4-byte CRC-32 of the payload, then the payload (a msgpack
:class:`SpoolUnit`). A torn last frame (the process died mid-write) is detected by its length or CRC when the
spool is opened, before anything is appended after it, and dropped with a warning; every complete frame before
it is kept.

The read position is persisted in ``<path>.offset`` (written atomically with a rename) after each unit is
confirmed in Redis, so a restarted writer resumes where it stopped. Each unit carries its batch token, and the
append script recognizes a retry of a room's last batch, so a unit re-sent after a crash is not written twice
(the writer sends at most one unit per room per round trip to keep that true).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import msgspec

log = logging.getLogger("eventstore")

_HEADER = struct.Struct(">II")


class SpoolError(RuntimeError):
    """The spool cannot take more data (full, or the file cannot be written)."""


class SpoolUnit(msgspec.Struct, array_like=True, frozen=True):
    """One batch for one room: the token it was (or will be) sent with, its fencing epoch and its records as
    append arguments (type, JSON with seq 0, data argument)."""

    room: str
    token: str
    epoch: int
    items: list[tuple[str, bytes, bytes]]


class Spool:
    """Append-only spool with a persisted read offset. Not thread-safe; used from one event loop."""

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 1 << 30, fsync: bool = False) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._offset_path = self.path.with_name(self.path.name + ".offset")
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(SpoolUnit)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")
        self._size = self._file.tell()
        self._offset = self._load_offset()
        if self._offset > self._size:
            log.warning("spool offset %d beyond file size %d; starting over", self._offset, self._size)
            self._offset = 0
        self._drop_torn_frame()

    def _drop_torn_frame(self) -> None:
        """Cut a torn last frame (left by a crash) now: frames appended after it would be lost with it."""
        pos = self._offset
        with open(self.path, "rb") as f:
            f.seek(pos)
            while pos < self._size:
                header = f.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    break
                length, crc = _HEADER.unpack(header)
                payload = f.read(length)
                if len(payload) < length or zlib.crc32(payload) != crc:
                    break
                pos += _HEADER.size + length
        if pos < self._size:
            self._drop_torn_tail(pos)

    def _load_offset(self) -> int:
        try:
            return int(self._offset_path.read_text().strip() or "0")
        except FileNotFoundError:
            return 0
        except ValueError:
            log.warning("spool offset file %s is unreadable; replaying from the start", self._offset_path)
            return 0

    @property
    def empty(self) -> bool:
        return self._offset >= self._size

    @property
    def pending_bytes(self) -> int:
        return self._size - self._offset

    def append(self, unit: SpoolUnit) -> None:
        payload = self._encoder.encode(unit)
        if self._size + len(payload) + _HEADER.size > self.max_bytes:
            raise SpoolError(f"spool {self.path} is full ({self._size} bytes, limit {self.max_bytes})")
        try:
            self._file.write(_HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
        except OSError as exc:
            raise SpoolError(f"cannot write spool {self.path}: {exc}") from exc
        self._size += len(payload) + _HEADER.size

    def read(self, max_units: int) -> list[tuple[SpoolUnit, int]]:
        """Up to ``max_units`` units from the read position, each with the offset just after it, stopping
        before a second unit for a room already included."""
        out: list[tuple[SpoolUnit, int]] = []
        rooms: set[str] = set()
        pos = self._offset
        with open(self.path, "rb") as f:
            f.seek(pos)
            while len(out) < max_units and pos < self._size:
                header = f.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    self._drop_torn_tail(pos)
                    break
                length, crc = _HEADER.unpack(header)
                payload = f.read(length)
                if len(payload) < length or zlib.crc32(payload) != crc:
                    self._drop_torn_tail(pos)
                    break
                try:
                    unit = self._decoder.decode(payload)
                except msgspec.DecodeError as exc:
                    # Intact framing but not a unit (a bug, or a spool from another version): set it aside
                    # for people to inspect and go on, rather than stall every record behind it.
                    self._set_aside(payload, pos, exc)
                    pos += _HEADER.size + length
                    if out:
                        out[-1] = (out[-1][0], pos)  # consuming the unit before it consumes this frame too
                    else:
                        self._offset = pos
                    continue
                if unit.room in rooms:
                    break
                rooms.add(unit.room)
                pos += _HEADER.size + length
                out.append((unit, pos))
        return out

    def _set_aside(self, payload: bytes, pos: int, exc: Exception) -> None:
        corrupt = self.path.with_name(self.path.name + ".corrupt")
        log.error("spool %s: frame at offset %d does not decode (%s); moved to %s", self.path, pos, exc, corrupt)
        with open(corrupt, "ab") as f:
            f.write(_HEADER.pack(len(payload), zlib.crc32(payload)) + payload)

    def _drop_torn_tail(self, pos: int) -> None:
        log.warning("spool %s: torn frame at offset %d dropped (%d bytes)", self.path, pos, self._size - pos)
        self._file.truncate(pos)
        self._file.seek(pos)
        self._size = pos

    def consumed(self, offset: int) -> None:
        """Everything before ``offset`` is in Redis. When all is consumed the file is emptied."""
        self._offset = offset
        if self._offset >= self._size:
            self._file.truncate(0)
            self._file.seek(0)
            self._size = 0
            self._offset = 0
        tmp = self._offset_path.with_name(self._offset_path.name + ".tmp")
        tmp.write_text(str(self._offset))
        os.replace(tmp, self._offset_path)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
