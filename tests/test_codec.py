"""Codec round trips for every record type: pure (many examples) and through the real append script."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore.codec import (
    DecodeError,
    decode_entry,
    decode_record,
    encode_for_append,
    encode_record,
    frame_batch,
)
from eventstore.keys import Keys
from eventstore.records import RECORD_TYPES, TAGS, DataReceived, Record, tag_of
from eventstore.writer import _APPEND_LUA

INT64 = st.integers(-(2**63), 2**63 - 1)
_BY_TYPE: dict[Any, st.SearchStrategy] = {
    str: st.text(),
    int: INT64,
    float: st.floats(allow_nan=False, allow_infinity=False),
    bool: st.booleans(),
    bytes: st.binary(max_size=512),
    list[str]: st.lists(st.text(), max_size=5),
    dict[str, str]: st.dictionaries(st.text(), st.text(), max_size=5),
    str | None: st.none() | st.text(),
}


def record_strategy(cls: type[Record], *, seq: st.SearchStrategy[int] | None = None) -> st.SearchStrategy[Record]:
    """Every field of ``cls`` drawn from the strategy for its declared type."""
    fields: dict[str, st.SearchStrategy] = {}
    for f in msgspec.structs.fields(cls):
        if f.type not in _BY_TYPE:
            raise AssertionError(f"{cls.__name__}.{f.name}: no strategy for {f.type!r}; extend _BY_TYPE")
        fields[f.name] = _BY_TYPE[f.type]
    fields["seq"] = seq if seq is not None else st.integers(0, 2**63 - 1)
    return st.builds(cls, **fields)


ANY_RECORD = st.one_of([record_strategy(cls) for cls in RECORD_TYPES])


def test_every_record_type_is_covered():
    assert len(RECORD_TYPES) == len(TAGS) == 28  # 21 of the transport and the daemon, 7 of LiveKit's webhooks
    for cls in RECORD_TYPES:
        record_strategy(cls)  # raises if a field type has no strategy


@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_record_json_round_trip(cls, data):
    record = data.draw(record_strategy(cls))
    assert decode_record(encode_record(record)) == record


def _fields_of(args: tuple[str, bytes, bytes], seq: int) -> dict[bytes, bytes]:
    """What the append script writes for one record (the entry fields, as redis-py returns them)."""
    t, rec, data = args
    head = f'{{"type":"{t}","seq":0,'.encode()
    assert rec.startswith(head)
    fields = {b"type": t.encode(), b"seq": str(seq).encode(),
              b"rec": f'{{"type":"{t}","seq":{seq},'.encode() + rec[len(head):]}
    if data:
        fields[b"data"] = data[1:]
    return fields


@settings(max_examples=500, deadline=None)
@given(record=ANY_RECORD, seq=st.integers(1, 2**53))
def test_encode_for_append_then_entry_round_trip(record, seq):
    args = encode_for_append(record)
    assert args[0] == tag_of(record)
    assert args[1].startswith(f'{{"type":"{args[0]}","seq":0,'.encode())
    if isinstance(record, DataReceived):
        assert args[2] == b"d" + record.data
        assert b'"data":""' in args[1]  # no base64 copy inside the JSON text
    else:
        assert args[2] == b""
    assert decode_entry(_fields_of(args, seq)) == msgspec.structs.replace(record, seq=seq)


def test_frame_batch_layout():
    blob = frame_batch([("a", b"bc", b""), ("de", b"", b"dxyz")])
    assert blob == (b"\0\0\0\1\0\0\0\2\0\0\0\0" + b"abc" + b"\0\0\0\2\0\0\0\0\0\0\0\4" + b"de" + b"dxyz")
    assert frame_batch([]) == b""


@pytest.mark.parametrize("fields, reason", [
    ({b"foo": b"bar"}, "missing_field"),
    ({b"type": b"connected", b"rec": b"{}"}, "missing_field"),
    ({b"type": b"connected", b"seq": b"x1", b"rec": b"{}"}, "bad_seq"),
    ({b"type": b"connected", b"seq": b"1", b"rec": b"{not json"}, "invalid_json"),
    ({b"type": b"teleported", b"seq": b"1",
      b"rec": b'{"type":"teleported","seq":1,"room":"r","session":"s","ts":1.0}'}, "unknown_type"),
    ({b"type": b"connected", b"seq": b"1", b"rec": b'{"type":"connected","seq":1,"room":"r"}'},
     "invalid_record"),
    ({b"type": b"connected", b"seq": b"1", b"rec": b"[1,2]"}, "invalid_record"),
    ({b"type": b"reconnecting", b"seq": b"1",
      b"rec": b'{"type":"connected","seq":1,"room":"r","session":"s","ts":1.0}'}, "type_mismatch"),
    ({b"type": b"connected", b"seq": b"2",
      b"rec": b'{"type":"connected","seq":1,"room":"r","session":"s","ts":1.0}'}, "seq_mismatch"),
    ({b"type": b"data_received", b"seq": b"1",
      b"rec": b'{"type":"data_received","seq":1,"room":"r","session":"s","ts":1.0}'}, "missing_field"),
])
def test_decode_entry_refuses_garbage(fields, reason):
    with pytest.raises(DecodeError) as info:
        decode_entry(fields)
    assert info.value.reason == reason


def test_newer_schema_fields_are_ignored_and_missing_ones_defaulted():
    rec = (b'{"type":"participant_left","seq":3,"v":2,"room":"r","session":"s","ts":1.5,'
           b'"participant_id":"p","mood":"grumpy","extra":{"nested":[1,2]}}')
    record = decode_entry({b"type": b"participant_left", b"seq": b"3", b"rec": rec})
    assert (record.seq, record.v, record.participant_id, record.reason) == (3, 2, "p", "disconnected")


# --- through the real append script ---------------------------------------------------------------------

_rooms = itertools.count()


@pytest.fixture
def sync_redis(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _append(client: redis.Redis, script, room: str, records: list[Record], token: str = "") -> list:
    keys = Keys()
    return script(keys=[keys.events(room), keys.meta(room), keys.lease(room)],
                  args=[0, -1, token, 0, frame_batch([encode_for_append(r) for r in records])], client=client)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(ANY_RECORD, min_size=1, max_size=6))
def test_append_script_round_trip(sync_redis, records):
    script = sync_redis.register_script(_APPEND_LUA)
    room = f"codec-{next(_rooms)}"
    reply = _append(sync_redis, script, room, records)
    assert reply[:3] == [b"OK", 1, len(records)]
    entries = sync_redis.xrange(Keys().events(room))
    assert reply[3] == entries[-1][0]
    got = [decode_entry(fields) for _, fields in entries]
    assert got == [msgspec.structs.replace(r, seq=i) for i, r in enumerate(records, 1)]
    for (_, fields), record in zip(entries, records):
        assert (b"data" in fields) == isinstance(record, DataReceived)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=4096) | st.text(max_size=300).map(str.encode))
def test_data_received_payload_is_the_raw_entry_field(sync_redis, payload):
    script = sync_redis.register_script(_APPEND_LUA)
    room = f"data-{next(_rooms)}"
    record = DataReceived(room=room, session="s", ts=1.0, participant_id=None, data=payload, topic="t")
    _append(sync_redis, script, room, [record])
    [(_, fields)] = sync_redis.xrange(Keys().events(room))
    assert fields[b"data"] == payload  # byte-exact; text reads as text in redis-cli
    assert b'"data":""' in fields[b"rec"]
    assert decode_entry(fields) == msgspec.structs.replace(record, seq=1)


def test_text_payload_reads_as_text(sync_redis):
    script = sync_redis.register_script(_APPEND_LUA)
    text = 'hello, wörld: {"k": 1} ✓'
    record = DataReceived(room="txt", session="s", ts=1.0, participant_id="alice", data=text.encode())
    _append(sync_redis, script, "txt", [record])
    [(_, fields)] = sync_redis.xrange(Keys().events("txt"))
    assert fields[b"data"].decode("utf-8") == text


@pytest.mark.parametrize("ts", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_timestamps_are_refused_before_append(ts):
    from eventstore.codec import InvalidRecord, encode_for_append
    from eventstore.records import Connected

    with pytest.raises(InvalidRecord):
        encode_for_append(Connected(room="r", session="s", ts=ts))
