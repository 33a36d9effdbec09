"""StreamTee: what a user's own LiveKit stream handler reads while the recorder reads the same stream.

An incoming stream has one reader (its ``read_incremental`` request consumes the FFI handle), and the recorder
needs it for every topic. A pipeline that registered a handler for a topic (``room.register_text_stream_handler``)
therefore gets a tee instead: the same ``info``, the same chunks in order, the same end (``StopAsyncIteration``,
or the same :class:`~livekit.rtc.StreamError`), behaving like rtc's ``TextStreamReader``/``ByteStreamReader``
(iteration, ``read_all``, ``close``/``aclose``). Closing the tee stops only the copy; the recording goes on.
"""

from __future__ import annotations

import asyncio
from typing import Any

from livekit.rtc import StreamError


class StreamTee:
    def __init__(self, info: Any, *, text: bool) -> None:
        self._info = info
        self._text = text
        self._chunks: asyncio.Queue[str | bytes | None] = asyncio.Queue()  # None: the end (or closed)
        self._error: StreamError | None = None
        self._finished = False
        self._closed = False

    @property
    def info(self) -> Any:
        """The real reader's info (its ``attributes`` gain the trailer's when the stream ends)."""
        return self._info

    # --- fed by the recorder -------------------------------------------------------------------------------

    def feed(self, chunk: str | bytes) -> None:
        if not self._closed:
            self._chunks.put_nowait(chunk)

    def end(self, error: StreamError | None) -> None:
        if not self._closed:
            self._error = error
            self._chunks.put_nowait(None)

    # --- what the user's handler uses ----------------------------------------------------------------------

    def __aiter__(self) -> StreamTee:
        return self

    async def __anext__(self) -> str | bytes:
        if not self._finished:
            chunk = await self._chunks.get()
            if chunk is not None:
                return chunk
            self._finished = True
        if self._error is not None and not self._closed:
            raise self._error
        raise StopAsyncIteration

    async def read_all(self) -> str | bytes:
        parts = [chunk async for chunk in self]
        return "".join(parts) if self._text else b"".join(parts)  # type: ignore[arg-type]

    def close(self) -> None:
        """Stop reading the copy; a read waiting for the next chunk ends at once."""
        if not self._closed:
            self._closed = True
            self._finished = True
            self._chunks.put_nowait(None)

    async def aclose(self) -> None:
        self.close()
