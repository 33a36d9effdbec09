"""A local append-only spool file for batches that could not reach Redis.

Frame format: 4-byte big-endian payload length, 4-byte CRC-32 of the payload, then the payload (a msgpack
:class:`SpoolUnit`). A torn last frame (the process died mid-write) is detected by its length or CRC when the
spool is opened, before anything is appended after it, and dropped with a warning; every complete frame before
it is kept.

No file I/O runs on the event loop: after opening (``Spool(...)``, or ``await Spool.open(...)`` from a running
loop), every operation runs in one worker thread per spool, in the order the operations were called.

``append(*units)`` is all or nothing: it encodes every unit, checks that they all fit under ``max_bytes`` and
writes them with one write; if the write fails part-way the file is cut back to its previous size.

Replay goes by *windows*: the frames from the read position, grouped into at most one batch per room (the
room's consecutive units with the same epoch, up to ``max_batch`` records, sent with the token of the room's
last unit); a window ends before the first unit that would need a second batch for its room, so it is one round
trip. The append script recognizes a retry of a room's *last* batch by its token, so before a window is sent its
bounds are persisted in ``<path>.offset`` (``start end``, written to a temporary file and renamed). A restarted
spool re-reads exactly that window and groups it the same way, into the same batches with the same tokens: a
window Redis already executed comes back ``DUP`` instead of being written twice. A unit marked ``sent`` (its
batch was in flight when it was spooled, so Redis may hold it) is always a batch of its own, with its own token.
``consumed(window)`` moves the read position past the window; once everything is consumed the file is emptied.

With ``fsync=True`` every append is fsynced, and so are the offset file (before its rename), the directory
(after the rename, and when the spool file is created) and the emptied spool file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, TypeVar

import msgspec

log = logging.getLogger("eventstore")

_HEADER = struct.Struct(">II")
_WINDOW_BYTES = 4 << 20  # a window takes no more frames once it holds this many bytes (it always takes one)
T = TypeVar("T")


class SpoolError(RuntimeError):
    """The spool cannot take more data (full, closed, or the file cannot be written)."""


class SpoolUnit(msgspec.Struct, array_like=True, frozen=True):
    """One batch for one room: the token it was (or will be) sent with, its fencing epoch, its records as append
    arguments (type, JSON with seq 0, data argument), and whether it may have been sent already (``sent``; frames
    of earlier versions, without it, decode as ``False``, and their decoder ignores it)."""

    room: str
    token: str
    epoch: int
    items: list[tuple[str, bytes, bytes]]
    sent: bool = False


@dataclass(frozen=True, eq=False)
class SpoolWindow:
    """The frames ``[start, end)`` as at most one batch per room, in the order the rooms first appear."""

    start: int
    end: int
    batches: list[SpoolUnit]


def _read_frame(f: IO[bytes]) -> bytes | None:
    """The payload of the frame at ``f``'s position, or None when it is torn (short, or a bad CRC)."""
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    length, crc = _HEADER.unpack(header)
    payload = f.read(length)
    if len(payload) < length or zlib.crc32(payload) != crc:
        return None
    return payload


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _merge(units: list[SpoolUnit]) -> SpoolUnit:
    """One room's units of a window as one batch, under the token of the last one."""
    if len(units) == 1:
        return units[0]
    first = units[0]
    return SpoolUnit(first.room, units[-1].token, first.epoch, [i for u in units for i in u.items], first.sent)


def _joins(group: list[SpoolUnit], unit: SpoolUnit, max_batch: int) -> bool:
    first = group[0]
    return (not first.sent and not unit.sent and unit.epoch == first.epoch
            and sum(len(u.items) for u in group) + len(unit.items) <= max_batch)


class Spool:
    """Append-only spool with a persisted read position. Used from one event loop; its file I/O runs in a
    worker thread (the state below is written only there)."""

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 1 << 30, fsync: bool = False) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._offset_path = self.path.with_name(self.path.name + ".offset")
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(SpoolUnit)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if created and fsync:
            _fsync_dir(self.path.parent)
        self._size = os.fstat(self._fd).st_size
        self._broken = ""  # why appends are refused after a failed write could not be undone
        self._window: SpoolWindow | None = None
        self._saved = self._load_offset()  # what the offset file says
        self._offset, self._window_end = self._saved
        if self._offset > self._size:
            log.warning("spool offset %d beyond file size %d; starting over", self._offset, self._size)
            self._offset = self._window_end = 0
        self._drop_torn_frame()
        if self._window_end > self._size:
            log.warning("spool %s: the window in flight ends beyond the file; it is read afresh", self.path)
            self._window_end = self._offset
        self._writes = 0  # appends under way (counted on the event loop)
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")

    @classmethod
    async def open(cls, path: str | os.PathLike[str], **kw: Any) -> Spool:
        """``Spool(path, **kw)`` from a running loop: opening reads the pending frames, off the loop."""
        return await asyncio.to_thread(cls, path, **kw)

    def _load_offset(self) -> tuple[int, int]:
        try:
            text = self._offset_path.read_text()
        except FileNotFoundError:
            return 0, 0
        try:
            parts = [int(p) for p in text.split()] or [0]
            if len(parts) > 2 or parts[0] < 0 or parts[-1] < parts[0]:
                raise ValueError(text)
        except ValueError:
            log.warning("spool offset file %s is unreadable; replaying from the start", self._offset_path)
            return 0, 0
        return parts[0], parts[-1]  # "start end"; earlier versions wrote "start" alone

    def _drop_torn_frame(self) -> None:
        """Cut a torn last frame (left by a crash) now: frames appended after it would be lost with it."""
        pos = self._offset
        with open(self.path, "rb") as f:
            f.seek(pos)
            while pos < self._size:
                payload = _read_frame(f)
                if payload is None:
                    break
                pos += _HEADER.size + len(payload)
        if pos < self._size:
            self._drop_torn_tail(pos)

    def _drop_torn_tail(self, pos: int) -> None:
        log.warning("spool %s: torn frame at offset %d dropped (%d bytes)", self.path, pos, self._size - pos)
        os.ftruncate(self._fd, pos)
        self._size = pos

    @property
    def empty(self) -> bool:
        """Nothing to replay and no append under way."""
        return self._writes == 0 and self._offset >= self._size

    @property
    def pending_bytes(self) -> int:
        return max(0, self._size - self._offset)

    # --- async API (the work runs in the spool's thread) --------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in the worker thread. A cancelled caller does not stop it: it runs to its end."""
        if self._closed:
            raise SpoolError(f"spool {self.path} is closed")
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        future.add_done_callback(_retrieve)
        return await asyncio.shield(future)

    async def append(self, *units: SpoolUnit) -> None:
        """Write ``units``, in order, all or nothing. Raises :class:`SpoolError` (then nothing was written)."""
        if not units:
            return
        if self._closed:
            raise SpoolError(f"spool {self.path} is closed")
        self._writes += 1
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._write, units)
        future.add_done_callback(self._write_done)
        await asyncio.shield(future)

    def _write_done(self, future: asyncio.Future[None]) -> None:
        self._writes -= 1
        _retrieve(future)

    async def next_window(self, max_batch: int, max_rooms: int = 256) -> SpoolWindow | None:
        """The window to send next (the same one until it is consumed), persisted before it is returned; None
        when nothing is pending. ``max_batch`` and ``max_rooms`` bound a new window's batches and rooms."""
        return await self._call(self._next_window, max_batch, max_rooms)

    async def consumed(self, window: SpoolWindow) -> None:
        """Everything in ``window`` (and before it) is in Redis. When all is consumed the file is emptied."""
        await self._call(self._consume, window)

    async def aclose(self) -> None:
        if self._closed:
            return
        await self._call(self._close_file)
        self._closed = True
        self._executor.shutdown(wait=False)

    def close(self) -> None:
        """Close from synchronous code (waits for the operation under way, if any)."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        self._close_file()

    # --- the worker thread ------------------------------------------------------------------------------

    def _write(self, units: tuple[SpoolUnit, ...]) -> None:
        if self._broken:
            raise SpoolError(f"spool {self.path} cannot be written: {self._broken}")
        frames = b"".join(_frame(self._encoder.encode(u)) for u in units)
        if self._size + len(frames) > self.max_bytes:
            raise SpoolError(f"spool {self.path} is full ({self._size} bytes, limit {self.max_bytes}; "
                             f"{len(frames)} more refused)")
        try:
            view = memoryview(frames)
            while view:
                view = view[os.write(self._fd, view):]
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self._cut_back()
            raise SpoolError(f"cannot write spool {self.path}: {exc}") from exc
        self._size += len(frames)

    def _cut_back(self) -> None:
        """Undo a failed write: the file ends where it ended before."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as exc:
            self._broken = f"a failed write could not be undone ({exc})"
            log.error("spool %s: %s; it takes no more appends", self.path, self._broken)

    def _next_window(self, max_batch: int, max_rooms: int) -> SpoolWindow | None:
        if self._window is not None:
            return self._window
        if self._offset >= self._size:
            return None
        window = None
        if self._window_end > self._offset:  # persisted by an earlier run: the same frames, grouped the same way
            window = self._scan(self._offset, self._window_end, 0, 0)
            if window is None:
                log.warning("spool %s: the window in flight [%d, %d) no longer reads; it is read afresh",
                            self.path, self._offset, self._window_end)
        if window is None:
            window = self._scan(self._offset, None, max_batch, max_rooms)
            assert window is not None
            if window.end == window.start:
                return None  # only a torn frame was left
            self._save(window.start, window.end)
        self._window_end = window.end
        self._window = window
        return window

    def _scan(self, start: int, stop: int | None, max_batch: int, max_rooms: int) -> SpoolWindow | None:
        """The frames from ``start`` as a window: exactly up to ``stop`` (a persisted window; None if it no longer
        reads), or, when ``stop`` is None, as far as one batch per room, ``max_rooms`` and the byte bound allow."""
        groups: dict[str, list[SpoolUnit]] = {}
        pos = start
        with open(self.path, "rb") as f:
            f.seek(pos)
            while pos < (self._size if stop is None else stop):
                payload = _read_frame(f)
                if payload is None:
                    if stop is not None:
                        return None
                    self._drop_torn_tail(pos)
                    break
                end = pos + _HEADER.size + len(payload)
                try:
                    unit = self._decoder.decode(payload)
                except msgspec.DecodeError as exc:
                    if stop is None:
                        self._set_aside(payload, pos, exc)
                    pos = end
                    continue
                group = groups.get(unit.room)
                if stop is None and groups and (
                        pos - start >= _WINDOW_BYTES or (group is None and len(groups) >= max_rooms)
                        or (group is not None and not _joins(group, unit, max_batch))):
                    break
                groups.setdefault(unit.room, []).append(unit)
                pos = end
        if stop is not None and pos != stop:
            return None
        return SpoolWindow(start, pos, [_merge(units) for units in groups.values()])

    def _set_aside(self, payload: bytes, pos: int, exc: Exception) -> None:
        """Intact framing but not a unit (a bug, or a spool from another version): keep it for people to inspect
        and go on, rather than stall every record behind it."""
        corrupt = self.path.with_name(self.path.name + ".corrupt")
        log.error("spool %s: frame at offset %d does not decode (%s); moved to %s", self.path, pos, exc, corrupt)
        with open(corrupt, "ab") as f:
            f.write(_frame(payload))

    def _consume(self, window: SpoolWindow) -> None:
        if window is not self._window:
            raise SpoolError(f"spool {self.path}: consumed() of a window that is not the one in flight")
        self._window = None
        self._offset = self._window_end = window.end
        if self._offset < self._size:
            return  # persisted with the next window (or at close): until then a restart re-sends this one
        os.ftruncate(self._fd, 0)
        if self.fsync:
            os.fsync(self._fd)
        self._size = 0
        self._offset = self._window_end = 0
        self._save(0, 0)

    def _save(self, start: int, end: int) -> None:
        tmp = self._offset_path.with_name(self._offset_path.name + ".tmp")
        try:
            with open(tmp, "w") as f:
                f.write(f"{start} {end}\n")
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self._offset_path)
            if self.fsync:
                _fsync_dir(self._offset_path.parent)
        except OSError as exc:
            raise SpoolError(f"cannot write spool offset {self._offset_path}: {exc}") from exc
        self._saved = (start, end)

    def _close_file(self) -> None:
        try:
            if self._window is None and self._saved != (self._offset, self._offset):
                self._save(self._offset, self._offset)
        except SpoolError as exc:
            log.warning("%s; the next start re-sends the last window (recognized as a retry)", exc)
        finally:
            os.close(self._fd)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an outcome seen: a caller that was cancelled must not leave 'exception never retrieved' behind."""
    if not future.cancelled():
        future.exception()
