"""Encoding records to stream entries and back.

A stream entry has the fields ``type`` (the record's tag), ``seq`` (its per-room sequence number), ``rec`` (the
whole record as JSON text) and, for ``data_received`` only, ``data`` (the raw payload, so text reads as text in
redis-cli and bytes round-trip exactly; the JSON text carries ``"data":""`` instead of a base64 copy).

Before append, a record is encoded with ``"seq":0`` in a fixed place (``{"type":"<tag>","seq":0,...``); the
append script puts the real sequence number there. :func:`encode_for_append` produces that form, and
:func:`frame_batch` joins a batch of them into the script's single record argument.
"""

from __future__ import annotations

import math

import struct
from typing import Iterable, Mapping

import msgspec

from .records import RECORD_TYPES, AnyRecord, DataReceived, Record, tag_of

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder(AnyRecord)

# What the append script receives for one record: (type, rec-with-seq-0, data argument).
# The data argument is b"" when the entry has no data field, else b"d" + payload.
AppendArgs = tuple[str, bytes, bytes]


_FRAME = struct.Struct(">III")
_TAGS: dict[type, str] = {cls: cls.__struct_config__.tag for cls in RECORD_TYPES}  # type: ignore[misc]


class InvalidRecord(ValueError):
    """A record that cannot be appended as it is."""


class DecodeError(ValueError):
    """A stream entry is not a record this version understands. ``reason`` is a short machine word."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode_record(record: Record) -> bytes:
    """The record as JSON text (with whatever ``seq`` it has; payloads stay inside for DataReceived)."""
    return _json_encoder.encode(record)


def decode_record(data: bytes | str) -> AnyRecord:
    """Inverse of :func:`encode_record`."""
    return _json_decoder.decode(data)


def encode_for_append(record: Record) -> AppendArgs:
    """Encode a record for the append script: seq set to 0, payload split out of the JSON text.

    Raises :class:`InvalidRecord` for a record that could never be decoded again (a non-finite ``ts``).
    """
    if not math.isfinite(record.ts):
        raise InvalidRecord(f"record ts must be a finite number, got {record.ts!r}")
    if record.seq != 0:
        record = msgspec.structs.replace(record, seq=0)
    tag = _TAGS.get(type(record)) or tag_of(record)
    if isinstance(record, DataReceived):
        payload = record.data
        rec = _json_encoder.encode(msgspec.structs.replace(record, data=b""))
        return tag, rec, b"d" + payload
    return tag, _json_encoder.encode(record), b""


def frame_batch(items: Iterable[AppendArgs]) -> bytes:
    """The append script's record argument: per record a 12-byte header (three big-endian uint32 lengths of
    type, rec and data argument) followed by those three strings."""
    pack = _FRAME.pack
    parts: list[bytes] = []
    for t, rec, data in items:
        tb = t.encode()
        parts += (pack(len(tb), len(rec), len(data)), tb, rec, data)
    return b"".join(parts)


def _field(fields: Mapping[bytes, bytes], name: bytes) -> bytes:
    value = fields.get(name)
    if value is None:
        raise DecodeError("missing_field", f"entry has no {name.decode()!r} field")
    return value


def decode_entry(fields: Mapping[bytes, bytes]) -> AnyRecord:
    """Decode a stream entry's fields (bytes keys and values, as redis-py returns them) into a record.

    Raises :class:`DecodeError` for anything that is not a well-formed entry of a known record type: garbage
    written by someone else, a type from a future schema, a ``seq`` field that disagrees with the JSON.
    """
    type_ = _field(fields, b"type")
    rec = _field(fields, b"rec")
    seq_raw = _field(fields, b"seq")
    try:
        seq = int(seq_raw)
    except ValueError:
        raise DecodeError("bad_seq", f"seq field is not an integer: {seq_raw[:40]!r}") from None
    try:
        record = _json_decoder.decode(rec)
    except msgspec.ValidationError as exc:
        reason = "unknown_type" if "Invalid value" in str(exc) and "type" in str(exc) else "invalid_record"
        raise DecodeError(reason, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise DecodeError("invalid_json", str(exc)) from None
    if tag_of(record).encode() != type_:
        raise DecodeError("type_mismatch", f"type field {type_[:40]!r} != record type {tag_of(record)!r}")
    if record.seq != seq:
        raise DecodeError("seq_mismatch", f"seq field {seq} != record seq {record.seq}")
    if isinstance(record, DataReceived):
        data = fields.get(b"data")
        if data is None:
            raise DecodeError("missing_field", "data_received entry has no 'data' field")
        record = msgspec.structs.replace(record, data=data)
    return record
