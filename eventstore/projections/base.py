"""The projection protocol: a named, pure reducer over records, with a msgspec state type.

A projection never does I/O. ``apply`` must not mutate the state it is given: it returns the next state (which
may be the same object when the record changes nothing). The consumer runner stores ``encode(state)`` and the
sequence number of the last record applied in one atomic write, so a projection's state plus its checkpoint are
always consistent.
"""

from __future__ import annotations

from typing import Generic, Iterable, Protocol, TypeVar, runtime_checkable

import msgspec

from ..records import Record

S = TypeVar("S")


@runtime_checkable
class Projection(Protocol[S]):
    """What a projection provides. ``name`` is used in keys: letters, digits, ``-`` and ``_`` only."""

    name: str
    state_type: type[S]

    def initial(self, room: str) -> S:
        """The state of a room before its first record."""
        ...

    def apply(self, state: S, record: Record) -> S:
        """The state after ``record``: pure, no I/O, never raises for a well-formed record."""
        ...


def fold(projection: Projection[S], room: str, records: Iterable[Record], state: S | None = None) -> S:
    """Apply records in order, starting from ``state`` (or the initial state)."""
    current = projection.initial(room) if state is None else state
    apply = projection.apply
    for record in records:
        current = apply(current, record)
    return current


class StateCodec(Generic[S]):
    """JSON codec for a projection's state type."""

    def __init__(self, state_type: type[S]) -> None:
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(state_type)

    def encode(self, state: S) -> bytes:
        return self._encoder.encode(state)

    def decode(self, data: bytes | str) -> S:
        return self._decoder.decode(data)
