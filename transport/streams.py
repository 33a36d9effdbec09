"""Text and byte streams (LiveKit data streams) recorded: one ``text_stream_received`` or ``byte_stream_received``
record per stream, whatever its topic, attributed to its sender.

pipecat's transport surfaces no data stream (``send_text`` on ``lk.chat``, transcripts, ``send_file``,
``stream_bytes``), and rtc 1.2.1 (``livekit/rtc/room.py``, ``Room._handle_text_stream_opened`` /
``_handle_byte_stream_opened``) hands a stream only to a handler registered for its exact topic and drops the
rest ("ignoring text stream with topic ..."): per-topic registration cannot cover unknown topics. The FFI's raw
``stream_header_received``/``stream_chunk_received``/``stream_trailer_received`` room events, which rtc ignores, do
not help either: streams sent with ``send_text`` (compressed, one packet) produce a header event and no chunk or
trailer event. So :class:`StreamRecorder` replaces those two methods on the bot's ``Room`` instance: every stream
gets a reader (registered with the room as rtc would, so a disconnect ends it), a handler registered for its
topic gets a :class:`~transport.stream_tee.StreamTee` of it, and the recorder reads it to the end.

What is recorded: the sender's identity from the stream header (LiveKit sends it even when the bot's room does
not know the sender yet, unlike a data packet's), topic, ids, MIME type, file name, attributes (the trailer's
included), the whole content or its first ``max_stream_bytes`` bytes (``truncated``) and always its full size.
A stream that ends abnormally is recorded too (``complete`` false, ``error`` in rtc's words): aborted by its
sender (``stream closed abnormally: <reason>``), its sender gone (rtc's stream manager ends their streams on their
``participant_disconnected``: ``... Participant X unexpectedly disconnected in the middle of sending data``),
text that is not UTF-8 (``UTF-8 decoding error: ...``), or the bot gone (rtc ends every reader on disconnect,
``Disconnected while receiving``). A sender who publishes nothing and leaves within LiveKit's 3-second batching of
participant updates is never announced to the bot, so nothing ends their streams: the transport ends whatever is
still open when the session ends (``the bot left``).

Records are written when a stream ends, through the same :class:`~transport.recorder.EventRecorder` as every
other record, from a task the transport tracks, so the session waits for them before ``session_ended``.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final

from livekit import rtc
from livekit.rtc import StreamError
from livekit.rtc.data_stream import ByteStreamReader, TextStreamReader

from eventstore import records as R

from .recorder import EventRecorder
from .stream_tee import StreamTee

log = logging.getLogger("transport")

MAX_STREAM_BYTES: Final = 1 << 20  # default: bytes of one stream's content kept in its record
BOT_LEFT: Final = "the bot left"  # the error of a stream still open when the session ends

Spawn = Callable[[Coroutine[Any, Any, None], str], None]


@dataclass(frozen=True, slots=True)
class _Kind:
    """How rtc handles one kind of stream: the names of the ``Room`` internals the recorder takes over."""

    text: bool
    reader: type
    record: type[R.Record]
    hook: str  # Room method rtc calls with the FFI's "opened" event
    handlers: str  # Room dict: topic -> handler registered by user code
    readers: str  # Room dict: FFI handle -> open reader (rtc ends them on disconnect)


TEXT: Final = _Kind(True, TextStreamReader, R.TextStreamReceived, "_handle_text_stream_opened",
                    "_text_stream_handlers", "_text_stream_readers")
BYTES: Final = _Kind(False, ByteStreamReader, R.ByteStreamReceived, "_handle_byte_stream_opened",
                     "_byte_stream_handlers", "_byte_stream_readers")


class IncomingStream:
    """One stream being read: the content kept (up to ``limit`` bytes), its full size, why it ended early."""

    def __init__(self, kind: _Kind, reader: Any, sender: str | None, sid: str, limit: int,
                 tee: StreamTee | None) -> None:
        self.kind, self.reader, self.sender, self.sid, self.tee = kind, reader, sender, sid, tee
        self.limit = limit
        self.opened_at = time.time()
        self.parts: list[bytes] = []
        self.kept = 0
        self.size = 0
        self.truncated = False
        self.ended_by = ""  # set when the recorder ends the stream itself (the session is over)

    def add(self, chunk: str | bytes) -> None:
        raw = chunk.encode("utf-8", "surrogatepass") if isinstance(chunk, str) else bytes(chunk)
        self.size += len(raw)
        room = self.limit - self.kept
        if len(raw) > room:
            self.truncated = True
            raw = raw[:max(room, 0)]
        if raw:
            self.parts.append(raw)
            self.kept += len(raw)
        if self.tee is not None:
            self.tee.feed(chunk)

    def abandon(self, why: str) -> None:
        """End the stream now as incomplete (the reader ends its iteration at once)."""
        if not self.ended_by:
            self.ended_by = why
            self.reader.close()

    def content(self) -> dict[str, Any]:
        kept = b"".join(self.parts)
        if not self.kind.text:
            return {"data": kept}
        # a cut at the byte limit may split a character: the decoder holds back an incomplete last one
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        return {"text": decoder.decode(kept, final=not self.truncated)}


class StreamRecorder:
    """Reads every text and byte stream reaching the bot's room and records each one when it ends."""

    def __init__(self, recorder: EventRecorder, spawn: Spawn, sids: Mapping[str, str], *,
                 max_bytes: int = MAX_STREAM_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be 0 or more, got {max_bytes}")
        self.recorder = recorder
        self.max_bytes = max_bytes
        self._spawn = spawn
        self._sids = sids  # identity -> SID of participants the transport has seen
        self._room: rtc.Room | None = None
        self._open: dict[int, IncomingStream] = {}  # FFI reader handle -> stream

    def attach(self, room: rtc.Room) -> None:
        missing = [name for kind in (TEXT, BYTES) for name in (kind.hook, kind.handlers, kind.readers)
                   if not hasattr(room, name)]
        if missing:  # another rtc version: record what we can, say so once
            log.error("room=%s session=%s: rtc.Room has no %s; text and byte streams are not recorded",
                      self.recorder.room, self.recorder.session, ", ".join(missing))
            return
        self._room = room
        setattr(room, TEXT.hook, lambda opened: self._opened(TEXT, opened))
        setattr(room, BYTES.hook, lambda opened: self._opened(BYTES, opened))

    @property
    def open_streams(self) -> dict[str, int]:
        """The streams being read: stream id -> bytes received so far."""
        return {stream.reader.info.stream_id: stream.size for stream in self._open.values()}

    def end_open(self, why: str = BOT_LEFT) -> None:
        """End every stream still open as incomplete (the session is over); their records follow at once."""
        for stream in list(self._open.values()):
            stream.abandon(why)

    # --- rtc's "stream opened" event, for every topic ------------------------------------------------------

    def _opened(self, kind: _Kind, opened: Any) -> None:
        room = self._room
        assert room is not None
        handle = opened.reader.handle.id
        readers: dict[int, Any] = getattr(room, kind.readers)
        try:
            reader = kind.reader(opened.reader, on_close=lambda: readers.pop(handle, None))
        except Exception:
            log.exception("room=%s session=%s: cannot read an incoming stream from %r", self.recorder.room,
                          self.recorder.session, opened.participant_identity)
            return
        readers[handle] = reader
        sender = opened.participant_identity or None
        tee = self._hand_to_user(kind, room, reader, opened.participant_identity)
        stream = IncomingStream(kind, reader, sender, self._sid(sender), self.max_bytes, tee)
        self._open[handle] = stream
        self._spawn(self._collect(handle, stream, opened.reader.info), f"record-{reader.info.topic}-stream")

    def _hand_to_user(self, kind: _Kind, room: rtc.Room, reader: Any, identity: str) -> StreamTee | None:
        """A tee of the stream for the handler user code registered for its topic, if any (rtc's way: a sync call)."""
        handler = getattr(room, kind.handlers).get(reader.info.topic)
        if handler is None:
            return None
        tee = StreamTee(reader.info, text=kind.text)
        try:
            handler(tee, identity)
        except Exception:  # rtc would log it too; the recording goes on
            log.exception("room=%s session=%s: stream handler for topic %r raised", self.recorder.room,
                          self.recorder.session, reader.info.topic)
        return tee

    def _sid(self, identity: str | None) -> str:
        if not identity:
            return ""
        participant = self._room.remote_participants.get(identity) if self._room is not None else None
        return participant.sid if participant is not None else self._sids.get(identity, "")

    # --- reading and recording -----------------------------------------------------------------------------

    async def _collect(self, handle: int, stream: IncomingStream, header: Any) -> None:
        error = ""
        try:
            async for chunk in stream.reader:
                stream.add(chunk)
        except StreamError as exc:
            error = exc.description
        except asyncio.CancelledError:
            await self._finish(handle, stream, header, stream.ended_by or "recording cancelled")
            raise
        except Exception as exc:
            log.exception("room=%s session=%s: reading stream %s failed", self.recorder.room,
                          self.recorder.session, stream.reader.info.stream_id)
            error = f"reading failed: {exc!r}"
        await self._finish(handle, stream, header, stream.ended_by or error)

    async def _finish(self, handle: int, stream: IncomingStream, header: Any, error: str) -> None:
        self._open.pop(handle, None)
        if stream.tee is not None:
            stream.tee.end(StreamError(error) if error else None)
        info = stream.reader.info
        fields: dict[str, Any] = dict(
            participant_id=stream.sender, participant_sid=stream.sid or self._sid(stream.sender),
            topic=info.topic, stream_id=info.stream_id, mime_type=info.mime_type,
            attributes=dict(info.attributes or {}), size=stream.size, truncated=stream.truncated,
            complete=not error, error=error, opened_at=stream.opened_at, **stream.content())
        if stream.kind.text:
            fields.update(reply_to=header.reply_to_stream_id, attachments=list(header.attached_stream_ids),
                          generated=header.generated)
        else:
            fields.update(name=info.name, declared_size=info.size or 0)
        try:
            await self.recorder.emit(stream.kind.record, **fields)
        except Exception:
            log.exception("room=%s session=%s: cannot record stream %s", self.recorder.room,
                          self.recorder.session, info.stream_id)
