"""The replay benchmark's data: plausible calls, loaded into Redis in the exact entry format of the writer.

:func:`load` writes about ``events`` records into ``rooms`` room streams with pipelined raw XADDs of
pre-encoded entries (one socket, replies parsed by hiredis): much faster than going through the writer, and
:func:`check_format` proves first, against a real EventWriter, that the entries are byte for byte the same.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from typing import Any

import hiredis
import msgspec

from common import LOOPBACK  # first: puts the repository on sys.path
from eventstore.codec import encode_record
from eventstore.connection import connect
from eventstore.keys import Keys
from eventstore.records import (
    AudioTrackSubscribed, AudioTrackUnsubscribed, BeforeDisconnect, CallStateUpdated, Connected, DataReceived,
    Disconnected, FirstParticipantJoined, ParticipantConnected, ParticipantDisconnected, ParticipantLeft,
    Reconnected, Reconnecting, Record, SessionEnded, SessionStarted, VideoTrackSubscribed, tag_of,
)
from eventstore.writer import EventWriter

KEYS = Keys()
REASONS = ("CLIENT_INITIATED", "CLIENT_INITIATED", "SIGNAL_CLOSE", "PARTICIPANT_REMOVED", "DUPLICATE_IDENTITY")


class CallScript:
    """One room's plausible history: sessions, people joining and leaving (pipecat's pair of departures),
    tracks, data packets, call-state feedback, rtc resumes, bot rejoins; the last session ends."""

    PEOPLE = tuple(f"user-{i}" for i in range(6))

    def __init__(self, rng: random.Random, room: str, t0: float) -> None:
        self.rng, self.room, self.ts = rng, room, t0
        self.out: list[Record] = []
        self.session = ""
        self.sessions = 0
        self.present: dict[str, list[str]] = {}  # identity -> audio tracks
        self.anyone_yet = False

    def add(self, cls: type[Record], **fields: Any) -> None:
        self.ts += self.rng.choice((0.05, 0.4, 1.0, 2.5))
        self.out.append(cls(seq=len(self.out) + 1, room=self.room, session=self.session, ts=self.ts,
                            producer="bench-daemon", epoch=3, **fields))

    def start(self, cause: str) -> None:
        self.sessions += 1
        self.session = f"{self.room}#{self.sessions}"
        self.add(SessionStarted, identity="bot", pipeline="echo", cause=cause)
        self.add(Connected, identity="bot", participant_sid="PA_bot", participants=sorted(self.present))
        for tracks in self.present.values():
            tracks.clear()

    def run(self, n: int) -> list[Record]:
        """About ``n`` records (at least 8)."""
        self.start("join")
        while len(self.out) < n - 3:
            x = self.rng.random()
            room_left = n - 3 - len(self.out)  # records this call may still have before its ending
            if room_left < 2 + max((len(t) for t in self.present.values()), default=0) + 2:
                x = 0.5  # near the end: only single records (data packets)
            self.step(x)
        self.add(BeforeDisconnect)
        self.add(Disconnected, reason="CLIENT_INITIATED", local=True)
        self.add(SessionEnded, reason="left", rejoin=False)
        return self.out

    def step(self, x: float) -> None:
        present = self.present
        absent = [p for p in self.PEOPLE if p not in present]
        if x < 0.10 and absent:
            self.arrive(self.rng.choice(absent))
        elif x < 0.16 and present:
            self.depart(self.rng.choice(sorted(present)))
        elif x < 0.62:
            self.data()
        elif x < 0.72 and present:
            who = self.rng.choice(sorted(present))
            track = f"TR_{len(self.out):06x}"
            present[who].append(track)
            self.add(AudioTrackSubscribed, participant_id=who, participant_sid=f"PA_{who}", track_sid=track)
        elif x < 0.76 and present:
            who = self.rng.choice(sorted(present))
            self.add(VideoTrackSubscribed, participant_id=who, track_sid=f"TV_{len(self.out):06x}",
                     video_source="camera")
        elif x < 0.80 and any(present.values()):
            who = self.rng.choice(sorted(w for w, t in present.items() if t))
            self.add(AudioTrackUnsubscribed, participant_id=who, track_sid=present[who].pop())
        elif x < 0.95:
            self.add(CallStateUpdated, state="joined", previous="joining",
                     phase="active" if present else "waiting", cause="participant_connected")
        else:
            self.bot_trouble(x)

    def arrive(self, who: str) -> None:
        self.present[who] = []
        self.add(ParticipantConnected, participant_id=who, participant_sid=f"PA_{who}_{len(self.out)}",
                 kind="STANDARD")
        if not self.anyone_yet:
            self.anyone_yet = True
            self.add(FirstParticipantJoined, participant_id=who, participant_sid=f"PA_{who}")

    def depart(self, who: str) -> None:
        for track in self.present.pop(who):
            self.add(AudioTrackUnsubscribed, participant_id=who, track_sid=track)
        reason = self.rng.choice(REASONS)
        self.add(ParticipantDisconnected, participant_id=who, reason=reason)
        self.add(ParticipantLeft, participant_id=who, disconnect_reason=reason)

    def data(self) -> None:
        who = self.rng.choice(sorted(self.present)) if self.present and self.rng.random() < 0.9 else None
        text = "ok " * self.rng.randrange(3, 40)
        payload = b'{"kind":"transcript","final":true,"text":"' + text.encode() + b'"}'
        self.add(DataReceived, participant_id=who, data=payload, topic="transcript" if who else "ops")

    def bot_trouble(self, x: float) -> None:
        if x < 0.985:
            self.add(Reconnecting)
            self.add(Reconnected, participants=sorted(self.present))
        else:
            self.add(Disconnected, reason="SIGNAL_CLOSE")
            self.add(SessionEnded, reason="connection_lost", rejoin=True)
            self.start("rejoin")


def entry_fields(record: Record) -> list[bytes]:
    """The stream entry the writer's append script makes of ``record`` (whose seq is set), as XADD fields."""
    if isinstance(record, DataReceived):
        rec = encode_record(msgspec.structs.replace(record, data=b""))
        return [b"type", tag_of(record).encode(), b"seq", b"%d" % record.seq, b"rec", rec, b"data", record.data]
    return [b"type", tag_of(record).encode(), b"seq", b"%d" % record.seq, b"rec", encode_record(record)]


def rooms_of(events: int, rooms: int, seed: int) -> Iterator[tuple[str, list[Record]]]:
    """``rooms`` rooms sharing ``events`` records (deterministic for a seed)."""
    rng = random.Random(seed)
    base, extra = divmod(events, rooms)
    t0 = 1_760_000_000.0
    for i in range(rooms):
        room = f"support-call-{i:05d}-{rng.randrange(16**6):06x}"
        yield room, CallScript(rng, room, t0 + i).run(base + (i < extra))


# --- loading: raw RESP over a socket, replies parsed with hiredis -------------------------------------------


def _command(*args: bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


class RawLoader:
    """Pipelines commands on one socket; checks every reply; keeps the last XADD id per key."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port))
        self.reader = hiredis.Reader()
        self.buf: list[bytes] = []
        self.keys: list[bytes | None] = []
        self.last_id: dict[bytes, bytes] = {}

    def add(self, key_for_id: bytes | None, *args: bytes) -> None:
        self.buf.append(_command(*args))
        self.keys.append(key_for_id)
        if len(self.buf) >= 20_000:
            self.sync()

    def sync(self) -> None:
        if not self.buf:
            return
        self.sock.sendall(b"".join(self.buf))
        for key in self.keys:
            reply = self.reader.gets()
            while reply is False:
                self.reader.feed(self.sock.recv(1 << 20))
                reply = self.reader.gets()
            if isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(f"load failed: {reply}")
            if key is not None:
                self.last_id[key] = reply
        self.buf.clear()
        self.keys.clear()

    def close(self) -> None:
        self.sync()
        self.sock.close()


def load(port: int, events: int, rooms: int, seed: int) -> dict[str, int]:
    """Write the rooms' records, meta hashes and room index as the writer would; ``{room: record count}``."""
    loader = RawLoader(port)
    loader.add(None, b"SET", KEYS.feed_partitions().encode(), b"16")
    counts: dict[str, int] = {}
    now = b"%d" % int(time.time())
    for room, records in rooms_of(events, rooms, seed):
        key = KEYS.events(room).encode()
        for record in records:
            loader.add(key, b"XADD", key, b"*", *entry_fields(record))
        loader.sync()  # the room's last id is known now
        loader.add(None, b"HSET", KEYS.meta(room).encode(), b"seq", b"%d" % len(records), b"first", b"1",
                   b"last", loader.last_id[key], b"batch", b"bench-load")
        loader.add(None, b"ZADD", KEYS.rooms().encode(), b"NX", now, room.encode())
        counts[room] = len(records)
    loader.close()
    return counts


async def check_format(url: str) -> None:
    """The loader writes exactly what the writer writes: same fields, same bytes."""
    redis = connect(url)
    try:
        (room, records), = rooms_of(120, 1, seed=99)
        writer = EventWriter(redis, producer="format-check")
        await writer.start()
        for record in records:
            await writer.append(msgspec.structs.replace(record, seq=0))
        await writer.aclose()
        written = [[k for kv in f.items() for k in kv] for _, f in await redis.xrange(KEYS.events(room))]
        if written != [entry_fields(r) for r in records]:
            raise RuntimeError("the bench loader's entries differ from the writer's")
    finally:
        await redis.flushall()
        await redis.aclose()
