"""How a LiveKit data stream becomes one record (``transport/streams.py``), without servers: the content kept up to
the limit (text cut on a character boundary), abnormal ends, a sender who leaves, the bot leaving, and the copy a
user's own stream handler reads. The same paths against a real LiveKit room: ``tests/test_transport_streams.py``."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from livekit import rtc
from livekit.rtc import StreamError

from eventstore import records as R
from transport.stream_tee import StreamTee
from transport.streams import BOT_LEFT, BYTES, MAX_STREAM_BYTES, TEXT, IncomingStream, StreamRecorder, _Kind


class FakeRecorder:
    room, session = "room-a", "s1"

    def __init__(self) -> None:
        self.records: list[R.Record] = []

    async def emit(self, cls: type[R.Record], **fields: Any) -> R.Record:
        record = cls(room=self.room, session=self.session, ts=1.0, **fields)
        self.records.append(record)
        return record


class FakeReader:
    """Yields ``chunks``, then ends (with ``error``, or waits until closed when ``hang``)."""

    def __init__(self, chunks: list[Any], *, error: str = "", hang: bool = False, **info: Any) -> None:
        self.info = SimpleNamespace(**{"topic": "lk.chat", "stream_id": "ST_1", "mime_type": "text/plain",
                                       "attributes": {}, "name": "", "size": 0, **info})
        self._chunks, self._error, self._hang = list(chunks), error, hang
        self._closed = asyncio.Event()

    def __aiter__(self) -> FakeReader:
        return self

    async def __anext__(self) -> Any:
        if self._closed.is_set():
            raise StopAsyncIteration
        if self._chunks:
            return self._chunks.pop(0)
        if self._hang:
            await self._closed.wait()
        if self._error:
            raise StreamError(self._error)
        raise StopAsyncIteration

    def close(self) -> None:
        self._closed.set()


HEADER = SimpleNamespace(reply_to_stream_id="ST_0", attached_stream_ids=["ST_f"], generated=False)


def recorder_with(limit: int = MAX_STREAM_BYTES) -> tuple[StreamRecorder, FakeRecorder]:
    fake = FakeRecorder()
    streams = StreamRecorder(fake, lambda coro, name: None, {"alice": "PA_a"}, max_bytes=limit)  # type: ignore
    streams._room = SimpleNamespace(remote_participants={})  # type: ignore[assignment]
    return streams, fake


async def collect(streams: StreamRecorder, kind: _Kind, reader: FakeReader, tee: StreamTee | None = None,
                  sender: str | None = "alice") -> None:
    stream = IncomingStream(kind, reader, sender, streams._sid(sender), streams.max_bytes, tee)
    streams._open[1] = stream
    await streams._collect(1, stream, HEADER)


async def test_a_text_stream_becomes_one_record_with_all_it_carried() -> None:
    streams, fake = recorder_with()
    await collect(streams, TEXT, FakeReader(["hello ", "bot ü"], attributes={"lang": "de"}))
    [rec] = fake.records
    assert isinstance(rec, R.TextStreamReceived)
    assert (rec.participant_id, rec.participant_sid, rec.topic, rec.stream_id) == ("alice", "PA_a", "lk.chat", "ST_1")
    assert (rec.text, rec.size, rec.truncated, rec.complete, rec.error) == ("hello bot ü", 12, False, True, "")
    assert (rec.attributes, rec.reply_to, rec.attachments, rec.mime_type) == ({"lang": "de"}, "ST_0", ["ST_f"],
                                                                              "text/plain")
    assert rec.opened_at > 0 and streams.open_streams == {}


async def test_text_over_the_limit_is_cut_on_a_character_boundary_and_keeps_its_full_size() -> None:
    streams, fake = recorder_with(limit=10)
    await collect(streams, TEXT, FakeReader(["ab€€", "€€€"]))  # 2 + 5 * 3 bytes; the cut at 10 splits a €
    [rec] = fake.records
    assert (rec.text, rec.size, rec.truncated, rec.complete) == ("ab€€", 17, True, True)


async def test_bytes_over_the_limit_keep_their_first_bytes_exactly() -> None:
    streams, fake = recorder_with(limit=5)
    await collect(streams, BYTES, FakeReader([b"\x00\x01\x02", b"\xff\xfe\xfd\xfc"], name="f.bin", size=7))
    [rec] = fake.records
    assert isinstance(rec, R.ByteStreamReceived)
    assert (rec.data, rec.size, rec.declared_size, rec.truncated, rec.name) == (b"\x00\x01\x02\xff\xfe", 7, 7, True,
                                                                                 "f.bin")


async def test_a_zero_limit_keeps_nothing_but_says_so() -> None:
    streams, fake = recorder_with(limit=0)
    await collect(streams, TEXT, FakeReader(["x"]))
    assert (fake.records[0].text, fake.records[0].size, fake.records[0].truncated) == ("", 1, True)
    with pytest.raises(ValueError):
        recorder_with(limit=-1)


async def test_an_abnormal_end_is_recorded_with_what_arrived_and_why() -> None:
    streams, fake = recorder_with()
    tee = StreamTee(SimpleNamespace(), text=True)
    await collect(streams, TEXT, FakeReader(["part one"], error="stream closed abnormally: gave up"), tee)
    [rec] = fake.records
    assert (rec.text, rec.complete, rec.error) == ("part one", False, "stream closed abnormally: gave up")
    assert await tee.__anext__() == "part one"
    with pytest.raises(StreamError, match="gave up"):
        await tee.__anext__()
    with pytest.raises(StreamError):  # and again, like rtc's reader
        await tee.read_all()


async def test_a_stream_still_open_when_the_session_ends_is_recorded_as_cut_short() -> None:
    # e.g. from a sender LiveKit never announced to the bot, so rtc never ended their stream
    streams, fake = recorder_with()
    task = asyncio.ensure_future(collect(streams, TEXT, FakeReader(["half of it"], hang=True)))
    await asyncio.sleep(0.01)
    assert streams.open_streams == {"ST_1": 10}
    streams.end_open(BOT_LEFT)
    await asyncio.wait_for(task, 2)
    [rec] = fake.records
    assert (rec.text, rec.complete, rec.error) == ("half of it", False, BOT_LEFT)
    assert streams.open_streams == {}


async def test_a_cancelled_recording_still_writes_its_record() -> None:
    streams, fake = recorder_with()
    task = asyncio.ensure_future(collect(streams, BYTES, FakeReader([b"abc"], hang=True)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [rec] = fake.records
    assert (rec.data, rec.complete, rec.error) == (b"abc", False, "recording cancelled")


async def test_the_copy_for_a_user_handler_gets_everything_even_past_the_limit_and_may_stop_early() -> None:
    streams, fake = recorder_with(limit=3)
    whole, stopped = StreamTee(SimpleNamespace(), text=False), StreamTee(SimpleNamespace(), text=False)
    await collect(streams, BYTES, FakeReader([b"abc", b"def"]), whole)
    assert await whole.read_all() == b"abcdef"
    assert fake.records[0].data == b"abc"
    stopped.feed(b"x")
    stopped.close()  # the user stops reading: the recording goes on
    with pytest.raises(StopAsyncIteration):
        await stopped.__anext__()
    stopped.feed(b"more")
    stopped.end(None)
    with pytest.raises(StopAsyncIteration):
        await stopped.__anext__()


async def test_a_waiting_user_read_wakes_when_the_copy_is_closed() -> None:
    tee = StreamTee(SimpleNamespace(), text=True)
    read = asyncio.ensure_future(tee.read_all())
    await asyncio.sleep(0)
    await tee.aclose()
    assert await asyncio.wait_for(read, 1) == ""


async def test_the_rtc_room_has_what_the_recorder_takes_over_and_user_registration_still_works() -> None:
    """Guards the rtc version: the recorder replaces two private methods of ``rtc.Room`` (see streams.py)."""
    room = rtc.Room()
    streams, _ = recorder_with()
    streams.attach(room)
    assert streams._room is room
    for kind in (TEXT, BYTES):
        assert getattr(room, kind.hook).__name__ == "<lambda>"  # ours, on the instance
        assert isinstance(getattr(room, kind.handlers), dict) and isinstance(getattr(room, kind.readers), dict)
    room.register_text_stream_handler("lk.chat", lambda reader, identity: None)
    room.register_byte_stream_handler("files", lambda reader, identity: None)


async def test_the_transport_passes_its_limit_to_the_stream_recorder() -> None:
    from transport.recorder import EventRecorder
    from transport.recording import RecordingLiveKitTransport

    recorder = EventRecorder(SimpleNamespace(producer="p"), room="r", session="s")  # type: ignore[arg-type]
    transport = RecordingLiveKitTransport("ws://127.0.0.1:1", "token", "r", recorder, max_stream_bytes=123)
    assert transport.streams.max_bytes == 123
    default = RecordingLiveKitTransport("ws://127.0.0.1:1", "token", "r", recorder)
    assert default.streams.max_bytes == MAX_STREAM_BYTES == 1 << 20
