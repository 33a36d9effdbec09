"""How records and states look to a person on a terminal, and as JSON lines for tools."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import msgspec

from eventstore.records import DataReceived, Record, tag_of

_ENVELOPE = {"seq", "v", "room", "session", "ts", "producer", "epoch", "type"}
_json = msgspec.json.Encoder()


def _payload_text(data: bytes, limit: int = 60) -> str:
    try:
        text = data.decode("utf-8")
        if text.isprintable():
            return repr(text if len(text) <= limit else text[:limit] + "…")
    except UnicodeDecodeError:
        pass
    return f"<{len(data)} bytes {data[:16].hex()}{'…' if len(data) > 16 else ''}>"


def record_line(record: Record) -> str:
    """One line per record: ``seq  time  type  key=value ...`` (empty fields left out)."""
    when = _dt.datetime.fromtimestamp(record.ts, tz=_dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
    fields: list[str] = []
    for name in record.__struct_fields__:
        if name in _ENVELOPE:
            continue
        value = getattr(record, name)
        if value in ("", None, [], b"") or (name == "reliable" and value is True):
            continue
        if isinstance(record, DataReceived) and name == "data":
            fields.append(f"data={_payload_text(value)}")
        else:
            fields.append(f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}")
    return f"{record.seq:>6}  {when}  {tag_of(record):<26} {' '.join(fields)}".rstrip()


def record_json(record: Record) -> str:
    """The record as one JSON line; data payloads as text when they are UTF-8, else base64 (``data_b64``)."""
    data: dict[str, Any] = msgspec.to_builtins(record)
    if isinstance(record, DataReceived):
        try:
            data["data"] = record.data.decode("utf-8")
        except UnicodeDecodeError:
            data.pop("data")
            data["data_b64"] = msgspec.to_builtins(record.data)
    return _json.encode(data).decode()


def state_json(state: Any) -> str:
    return msgspec.json.format(_json.encode(state), indent=2).decode()
