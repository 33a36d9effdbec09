"""Rebuild throughput: both projections from the log, ours vs. a naive baseline, same run, same redis-server.

    python bench/replay.py                       # 1,000,000 events in 10,000 rooms
    python bench/replay.py --events 100000 --rooms 1000

Starts its own redis-server (free loopback port, temp dir), loads ``--events`` records of plausible calls into
``--rooms`` rooms in the exact entry format of the writer (pipelined raw XADD of pre-encoded entries; checked
against a real EventWriter first), then times, on the same data:

- ``ours``: :func:`eventstore.consumer.replay_many`: every room, both projections (participants, call-state)
  rebuilt from zero (pipelined XRANGE over many rooms, a page decoded in one call, each record folded into both
  reducers, Python's cyclic GC paused meanwhile);
- ``naive``: redis-py ``XRANGE`` room by room, ``json.loads`` of each entry, dict-based reducers following the
  same rules written the simple way (mutable dicts, edited in place), both projections;
- for information: ours with the GC left on, ``replay()`` room by room and projection by projection (the
  one-room API), and the consumers (``ProjectionRunner.run(until_caught_up=True)`` per projection, which also
  writes every state to Redis with its compare-and-set checkpoint).

The naive reducers' conclusions are compared with ours on every room (who is present / left and why, per-person
and room counters, open tracks, bot state, call state, phase, remote participants, transitions), so both sides
do the same work. The workload has no departure without a LiveKit reason, so the naive side implements the
"suspect departure" rules (a full reconnect's synthetic departures) only roughly; everything the workload
exercises is implemented in full. Prints one JSON object; exits non-zero when ``ours / naive`` is below the
target ratio or the two disagree.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import hiredis
import msgspec

from eventstore.codec import encode_record
from eventstore.connection import connect
from eventstore.consumer import ProjectionRunner, replay, replay_many
from eventstore.keys import Keys
from eventstore.projections.callstate import CALL_STATE
from eventstore.projections.participants import PARTICIPANTS
from eventstore.reader import RoomReader
from eventstore.records import (
    AudioTrackSubscribed, AudioTrackUnsubscribed, BeforeDisconnect, CallStateUpdated, Connected, DataReceived,
    Disconnected, FirstParticipantJoined, ParticipantConnected, ParticipantDisconnected, ParticipantLeft,
    Reconnected, Reconnecting, Record, SessionEnded, SessionStarted, VideoTrackSubscribed, tag_of,
)
from eventstore.writer import EventWriter

TARGET_RATIO = 2.0
KEYS = Keys()
PROJECTIONS = (PARTICIPANTS, CALL_STATE)
REASONS = ("CLIENT_INITIATED", "CLIENT_INITIATED", "SIGNAL_CLOSE", "PARTICIPANT_REMOVED", "DUPLICATE_IDENTITY")


# --- the data: plausible calls ------------------------------------------------------------------------------


def room_history(rng: random.Random, room: str, n: int, t0: float) -> list[Record]:
    """About ``n`` records of one room: sessions, people joining and leaving (pipecat's pair of departures),
    tracks, data packets, call-state feedback, rtc resumes, bot rejoins; the last session ends."""
    out: list[Record] = []
    ts = t0
    session = ""
    sessions = 0
    present: dict[str, list[str]] = {}  # identity -> audio tracks
    anyone_yet = False
    people = [f"user-{i}" for i in range(6)]

    def add(cls: type[Record], **fields: Any) -> None:
        nonlocal ts
        ts += rng.choice((0.05, 0.4, 1.0, 2.5))
        out.append(cls(seq=len(out) + 1, room=room, session=session, ts=ts, producer="bench-daemon", epoch=3,
                       **fields))

    def start(cause: str) -> None:
        nonlocal session, sessions
        sessions += 1
        session = f"{room}#{sessions}"
        add(SessionStarted, identity="bot", pipeline="echo", cause=cause)
        add(Connected, identity="bot", participant_sid="PA_bot", participants=sorted(present))
        for tracks in present.values():
            tracks.clear()

    start("join")
    while len(out) < n - 3:
        x = rng.random()
        absent = [p for p in people if p not in present]
        room_left = n - 3 - len(out)  # records this call may still have before its ending
        if room_left < 2 + max((len(t) for t in present.values()), default=0) + 2:
            x = 0.5  # near the end: only single records (data packets)
        if x < 0.10 and absent:
            who = rng.choice(absent)
            present[who] = []
            add(ParticipantConnected, participant_id=who, participant_sid=f"PA_{who}_{len(out)}", kind="STANDARD")
            if not anyone_yet:
                anyone_yet = True
                add(FirstParticipantJoined, participant_id=who, participant_sid=f"PA_{who}")
        elif x < 0.16 and present:
            who = rng.choice(sorted(present))
            for track in present.pop(who):
                add(AudioTrackUnsubscribed, participant_id=who, track_sid=track)
            reason = rng.choice(REASONS)
            add(ParticipantDisconnected, participant_id=who, reason=reason)
            add(ParticipantLeft, participant_id=who, disconnect_reason=reason)
        elif x < 0.62:
            who = rng.choice(sorted(present)) if present and rng.random() < 0.9 else None
            text = "ok " * rng.randrange(3, 40)
            payload = b'{"kind":"transcript","final":true,"text":"' + text.encode() + b'"}'
            add(DataReceived, participant_id=who, data=payload, topic="transcript" if who else "ops")
        elif x < 0.72 and present:
            who = rng.choice(sorted(present))
            track = f"TR_{len(out):06x}"
            present[who].append(track)
            add(AudioTrackSubscribed, participant_id=who, participant_sid=f"PA_{who}", track_sid=track)
        elif x < 0.76 and present:
            who = rng.choice(sorted(present))
            add(VideoTrackSubscribed, participant_id=who, track_sid=f"TV_{len(out):06x}", video_source="camera")
        elif x < 0.80 and any(present.values()):
            who = rng.choice(sorted(w for w, t in present.items() if t))
            add(AudioTrackUnsubscribed, participant_id=who, track_sid=present[who].pop())
        elif x < 0.95:
            add(CallStateUpdated, state="joined", previous="joining", phase="active" if present else "waiting",
                cause="participant_connected")
        elif x < 0.985:
            add(Reconnecting)
            add(Reconnected, participants=sorted(present))
        else:
            add(Disconnected, reason="SIGNAL_CLOSE")
            add(SessionEnded, reason="connection_lost", rejoin=True)
            start("rejoin")
    add(BeforeDisconnect)
    add(Disconnected, reason="CLIENT_INITIATED", local=True)
    add(SessionEnded, reason="left", rejoin=False)
    return out


def entry_fields(record: Record) -> list[bytes]:
    """The stream entry the writer's append script makes of ``record`` (whose seq is set), as XADD fields."""
    if isinstance(record, DataReceived):
        rec = encode_record(msgspec.structs.replace(record, data=b""))
        return [b"type", tag_of(record).encode(), b"seq", b"%d" % record.seq, b"rec", rec, b"data", record.data]
    return [b"type", tag_of(record).encode(), b"seq", b"%d" % record.seq, b"rec", encode_record(record)]


def rooms_of(events: int, rooms: int, seed: int) -> Iterator[tuple[str, list[Record]]]:
    rng = random.Random(seed)
    base, extra = divmod(events, rooms)
    t0 = 1_760_000_000.0
    for i in range(rooms):
        room = f"support-call-{i:05d}-{rng.randrange(16**6):06x}"
        yield room, room_history(rng, room, base + (i < extra), t0 + i)


# --- loading: raw RESP over a socket, replies parsed with hiredis -------------------------------------------


def _command(*args: bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


class RawLoader:
    """Pipelines commands on one socket; checks every reply; keeps the last XADD id per key."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
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


def load(port: int, events: int, rooms: int, seed: int) -> tuple[int, list[str]]:
    loader = RawLoader(port)
    loader.add(None, b"SET", KEYS.feed_partitions().encode(), b"16")
    names: list[str] = []
    total = 0
    now = b"%d" % int(time.time())
    for room, records in rooms_of(events, rooms, seed):
        key = KEYS.events(room).encode()
        for record in records:
            loader.add(key, b"XADD", key, b"*", *entry_fields(record))
        loader.sync()  # the room's last id is known now
        loader.add(None, b"HSET", KEYS.meta(room).encode(), b"seq", b"%d" % len(records), b"first", b"1",
                   b"last", loader.last_id[key], b"batch", b"bench-load")
        loader.add(None, b"ZADD", KEYS.rooms().encode(), b"NX", now, room.encode())
        names.append(room)
        total += len(records)
    loader.close()
    return total, names


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
        assert written == [entry_fields(r) for r in records], "bench loader format differs from the writer's"
    finally:
        await redis.flushall()
        await redis.aclose()


# --- the naive baseline: XRANGE, json.loads, dict reducers --------------------------------------------------


def naive_participants(room: str) -> dict[str, Any]:
    return {"room": room, "last_seq": 0, "last_ts": 0.0, "session": "", "bot": "idle", "window_ts": None,
            "window_reason": "", "present": {}, "suspect": {}, "pending": {}, "left": {}, "people": {},
            "counters": dict.fromkeys(
                ("joins", "rejoins", "leaves", "data_messages", "data_bytes", "server_messages", "server_bytes",
                 "tracks_subscribed", "tracks_unsubscribed", "sessions", "reconnects", "bot_disconnects",
                 "peak_present", "anomalies"), 0),
            "anomalies": []}


def _person(s: dict[str, Any], who: str) -> dict[str, Any]:
    p = s["people"].get(who)
    if p is None:
        p = s["people"][who] = {"joins": 0, "rejoins": 0, "messages": 0, "bytes": 0, "seconds": 0.0}
    return p


def _note(s: dict[str, Any], r: dict[str, Any], text: str) -> None:
    s["anomalies"] = (s["anomalies"] + [{"seq": r["seq"], "event": r["type"], "description": text}])[-20:]
    s["counters"]["anomalies"] += 1


def _leave(s: dict[str, Any], who: dict[str, Any], at: float, reason: str, kind: str, seen: int = 0) -> None:
    s["present"].pop(who["identity"], None)
    s["left"][who["identity"]] = {"identity": who["identity"], "sid": who["sid"], "joined_at": who["joined_at"],
                                  "left_at": at, "reason": reason, "kind": kind, "seen": seen}
    _person(s, who["identity"])["seconds"] += max(0.0, at - who["joined_at"])
    s["counters"]["leaves"] += 1


def _join(s: dict[str, Any], who: str, sid: str, at: float, reported: bool) -> None:
    before = s["left"].pop(who, None)
    p = _person(s, who)
    rejoin = p["joins"] > 0 and (before is None or before["kind"] != "session_end")
    p["joins"] += 1
    p["rejoins"] += rejoin
    s["counters"]["joins"] += 1
    s["counters"]["rejoins"] += rejoin
    s["present"][who] = {"identity": who, "sid": sid, "joined_at": at, "reported": reported, "audio": [],
                         "video": []}
    s["counters"]["peak_present"] = max(s["counters"]["peak_present"], len(s["present"]))


def _since(s: dict[str, Any], r: dict[str, Any]) -> float:
    return r["ts"] if s["window_ts"] is None else s["window_ts"]


def _commit(s: dict[str, Any]) -> None:
    for pend in s["suspect"].values():
        _leave(s, pend["who"], pend["at"], pend["reason"], "observed", pend["seen"])
    s["suspect"] = {}


def _snapshot(s: dict[str, Any], names: list[str], now: float) -> None:
    since, why = _since(s, {"ts": now}), s["window_reason"] or "absent_from_snapshot"
    for who, pend in list(s["pending"].items()):
        del s["pending"][who]
        if who in names:
            s["present"][who] = dict(pend["who"], reported=False)
        else:
            _leave(s, pend["who"], pend["at"], pend["reason"], "observed", pend["seen"])
    for who, p in list(s["present"].items()):
        if not p["reported"] and who not in names:
            _leave(s, p, since, why, "inferred")
    for who in names:
        if who not in s["present"]:
            _join(s, who, "", now, False)
    s["counters"]["peak_present"] = max(s["counters"]["peak_present"], len(s["present"]))


KEEPS_SUSPECTS = {"participant_disconnected", "participant_left", "audio_track_unsubscribed",
                  "video_track_unsubscribed", "call_state_updated", "reconnecting"}
RANK = {"": 0, "disconnected": 1, "UNKNOWN_REASON": 2}


def naive_participants_apply(s: dict[str, Any], r: dict[str, Any]) -> None:
    t = r["type"]
    if r["room"] != s["room"]:
        _note(s, r, "record for another room")
        return
    if s["suspect"] and (t not in KEEPS_SUSPECTS or (t == "reconnecting" and s["bot"] not in ("connected", "joining"))):
        _commit(s)
    c = s["counters"]
    if t == "data_received":
        size = len(r["data"])
        c["data_messages"] += 1
        c["data_bytes"] += size
        if r["participant_id"] is None:
            c["server_messages"] += 1
            c["server_bytes"] += size
        else:
            p = _person(s, r["participant_id"])
            p["messages"] += 1
            p["bytes"] += size
    elif t.endswith("_track_subscribed") or t.endswith("_track_unsubscribed"):
        kind = "audio" if t.startswith("audio") else "video"
        subscribe = not t.endswith("unsubscribed")
        who = s["present"].get(r["participant_id"])
        if who is None:
            if subscribe:
                _note(s, r, "track for an absent participant")
        elif (r["track_sid"] in [x["track_sid"] for x in who[kind]]) == subscribe:
            _note(s, r, "track subscribed twice or not subscribed")
        elif subscribe:
            who[kind].append({"track_sid": r["track_sid"], "source": r.get("video_source", "")})
            c["tracks_subscribed"] += 1
        else:
            who[kind] = [x for x in who[kind] if x["track_sid"] != r["track_sid"]]
            c["tracks_unsubscribed"] += 1
    elif t == "participant_connected":
        pid, sid = r["participant_id"], r["participant_sid"]
        who = s["present"].get(pid)
        if who is not None:
            if who["reported"]:
                _note(s, r, "duplicate connect")
            who["reported"], who["sid"] = True, sid or who["sid"]
        elif pid in s["pending"]:
            back = s["pending"].pop(pid)["who"]
            s["present"][pid] = dict(back, sid=sid or back["sid"], reported=True)
        else:
            _join(s, pid, sid, r["ts"], True)
    elif t in ("participant_disconnected", "participant_left"):
        pid = r["participant_id"]
        bit = 1 if t == "participant_disconnected" else 2
        lk = r["reason"] if bit == 1 else r["disconnect_reason"]
        reason = lk if bit == 1 else (lk or r["reason"])
        who = s["present"].get(pid)
        if who is not None:
            where = "pending" if s["bot"] == "reconnecting" else "suspect" if lk in ("", "UNKNOWN_REASON") else ""
            if where:
                del s["present"][pid]
                s[where][pid] = {"who": dict(who, audio=[], video=[]), "at": r["ts"], "reason": reason, "seen": bit}
            else:
                _leave(s, who, r["ts"], reason, "observed", bit)
        else:
            where = "suspect" if pid in s["suspect"] else "pending" if pid in s["pending"] else "left"
            earlier = s[where].get(pid)
            if earlier is None:
                _note(s, r, "departure of unknown participant")
            elif earlier["seen"] & bit:
                _note(s, r, "repeated departure")
            else:
                earlier["seen"] |= bit
                if RANK.get(reason, 3) > RANK.get(earlier["reason"], 3):
                    earlier["reason"] = reason
                if where == "suspect" and lk not in ("", "UNKNOWN_REASON"):
                    pend = s["suspect"].pop(pid)
                    _leave(s, pend["who"], pend["at"], pend["reason"], "observed", pend["seen"])
    elif t == "session_started":
        for p in s["present"].values():
            p["reported"], p["audio"], p["video"] = False, [], []
        c["sessions"] += 1
        since = s["window_ts"]
        if since is None:
            since = r["ts"] if s["bot"] == "idle" else s["last_ts"]
        s.update(bot="joining", session=r["session"], window_ts=since, window_reason="left_while_bot_away")
    elif t in ("connected", "reconnected"):
        if t == "reconnected" and s["bot"] in ("idle", "away"):
            _note(s, r, "reconnected while away")
        else:
            if s["bot"] == "connected" or (t == "reconnected" and s["bot"] != "reconnecting"):
                _note(s, r, "snapshot while connected")
            _snapshot(s, r["participants"], r["ts"])
            s.update(bot="connected", window_ts=None, window_reason="")
    elif t == "reconnecting":
        if s["bot"] not in ("connected", "joining"):
            _note(s, r, "reconnecting while away")
        else:
            for p in s["present"].values():
                p["reported"] = False
            c["reconnects"] += 1
            s["pending"].update(s["suspect"])
            s["suspect"] = {}
            s.update(bot="reconnecting", window_ts=_since(s, r),
                     window_reason=s["window_reason"] or "left_while_reconnecting")
    elif t == "disconnected":
        if s["bot"] in ("idle", "away"):
            _note(s, r, "disconnected while away")
        else:
            for p in s["present"].values():
                p["audio"], p["video"] = [], []
            c["bot_disconnects"] += 1
            s.update(bot="away", window_ts=_since(s, r), window_reason="left_while_bot_away")
    elif t == "session_ended":
        if s["bot"] == "idle":
            _note(s, r, "session_ended with no session")
        if r["rejoin"]:
            s.update(bot="away", window_ts=_since(s, r), window_reason="left_while_bot_away")
        else:
            at = _since(s, r)
            for pend in s["pending"].values():
                _leave(s, pend["who"], pend["at"], pend["reason"], "observed", pend["seen"])
            s["pending"] = {}
            for who in list(s["present"].values()):
                _leave(s, who, at, r["reason"] or "session_ended", "session_end")
            s.update(bot="idle", window_ts=None, window_reason="")
    s["last_seq"], s["last_ts"] = r["seq"], r["ts"]


def naive_call(room: str) -> dict[str, Any]:
    return {"room": room, "state": "initialized", "phase": "idle", "session": "", "since": 0.0, "cause": None,
            "reconnect": "", "remote": [], "suspect": [], "pending": [], "history": [],
            "counters": dict.fromkeys(("sessions", "state_changes", "phase_changes", "resumes", "rejoins",
                                       "failures", "anomalies"), 0),
            "anomalies": []}


def _move(s: dict[str, Any], r: dict[str, Any], reason: str, state: str, phase: str, note: str = "",
          bump: str = "") -> None:
    c = s["counters"]
    if state != s["state"] or phase != s["phase"]:
        cause = {"event": r["type"], "seq": r["seq"], "ts": r["ts"], "reason": reason}
        s["history"] = (s["history"] + [{"from_state": s["state"], "to_state": state, "from_phase": s["phase"],
                                          "to_phase": phase, "cause": cause}])[-50:]
        s["cause"] = cause
        if state != s["state"]:
            s["since"] = r["ts"]
            c["state_changes"] += 1
        if phase != s["phase"]:
            c["phase_changes"] += 1
        s["state"], s["phase"] = state, phase
    if note:
        s["anomalies"] = (s["anomalies"] + [{"seq": r["seq"], "event": r["type"], "description": note}])[-20:]
        c["anomalies"] += 1
    if bump:
        c[bump] += 1


def naive_call_apply(s: dict[str, Any], r: dict[str, Any]) -> None:
    t = r["type"]
    if r["room"] != s["room"]:
        _move(s, r, "", s["state"], s["phase"], note="record for another room")
        return
    st, in_room = s["state"], s["state"] in ("joining", "joined", "leaving") or (
        s["state"] == "reconnecting" and s["reconnect"] == "resume")
    live = st in ("joined", "leaving")
    if t == "session_started":
        expected = st in ("initialized", "left", "failed") or (st == "reconnecting" and s["reconnect"] == "rejoin")
        note = "" if expected or r["cause"] == "takeover" else "session_started while in a session"
        _move(s, r, r["cause"] or "join", "joining", "idle" if s["phase"] == "ended" else s["phase"], note,
              "sessions")
        s.update(session=r["session"], reconnect="", remote=[], pending=[])
    elif t == "connected":
        remote = list(dict.fromkeys(s["remote"] + r["participants"]))
        _move(s, r, f"remote={len(remote)}", "joined", "active" if remote else "waiting",
              "" if st == "joining" else "connected while not joining")
        s.update(session=r["session"], reconnect="", remote=remote, pending=[])
    elif t in ("participant_connected", "first_participant_joined"):
        pid = r["participant_id"]
        if not in_room:
            _move(s, r, "", st, s["phase"], note="participant joined while out")
        elif pid not in s["remote"]:
            s["remote"].append(pid)
            if pid in s["pending"]:
                s["pending"].remove(pid)
            _move(s, r, pid, st, "active" if live else s["phase"])
    elif t in ("participant_disconnected", "participant_left"):
        pid = r["participant_id"]
        lk = r["reason"] if t == "participant_disconnected" else r["disconnect_reason"]
        if not in_room:
            _move(s, r, "", st, s["phase"], note="participant left while out")
        elif pid in s["remote"]:
            s["remote"].remove(pid)
            if st != "reconnecting" and lk in ("", "UNKNOWN_REASON"):
                s["suspect"].append(pid)
            else:
                _move(s, r, pid, st, ("active" if s["remote"] + s["suspect"] else "waiting") if live else s["phase"])
    elif t == "before_disconnect":
        if not in_room or st == "leaving":
            _move(s, r, "", st, s["phase"], note="before_disconnect while out")
        else:
            _move(s, r, "local", "leaving", s["phase"])
            s["reconnect"] = ""
    elif t == "disconnected":
        if not in_room:
            _move(s, r, "", st, s["phase"], note="disconnected while out")
        else:
            _move(s, r, r["reason"] or ("local" if r["local"] else ""), "left", s["phase"])
            s["reconnect"] = ""
    elif t == "reconnecting":
        if st not in ("joining", "joined", "leaving"):
            _move(s, r, "", st, s["phase"], note="reconnecting while out")
        else:
            _move(s, r, "", "reconnecting", s["phase"], bump="resumes")
            s.update(reconnect="resume", pending=list(dict.fromkeys(s["pending"] + s["remote"] + s["suspect"])),
                     remote=[], suspect=[])
    elif t == "reconnected":
        if st != "reconnecting" or s["reconnect"] != "resume":
            _move(s, r, "", st, s["phase"], note="reconnected while not resuming")
        else:
            remote = list(dict.fromkeys(s["remote"] + r["participants"]))
            _move(s, r, f"remote={len(remote)}", "joined", "active" if remote else "waiting")
            s.update(reconnect="", remote=remote, pending=[])
    elif t == "session_ended":
        if st == "initialized" or s["phase"] == "ended":
            _move(s, r, "", st, s["phase"], note="session_ended while out")
        elif r["rejoin"]:
            if st == "reconnecting" and s["reconnect"] == "rejoin":
                _move(s, r, "", st, s["phase"], note="session_ended twice")
            else:
                _move(s, r, r["reason"], "reconnecting", s["phase"], bump="rejoins")
                s.update(reconnect="rejoin", pending=[])
        else:
            failed = r["reason"] in ("failed", "restart_budget_exhausted", "join_failed", "pipeline_error",
                                     "connection_lost")
            _move(s, r, r["reason"], "failed" if failed else "left", "ended", bump="failures" if failed else "")
            s.update(reconnect="", remote=[], pending=[])


async def naive_rebuild(url: str, rooms: list[str]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    states = {}
    try:
        for room in rooms:
            part, call = naive_participants(room), naive_call(room)
            for _, fields in await r.xrange(KEYS.events(room)):
                record = json.loads(fields[b"rec"])
                if record["type"] == "data_received":
                    record["data"] = fields[b"data"]
                naive_participants_apply(part, record)
                naive_call_apply(call, record)
            states[room] = (part, call)
    finally:
        await r.aclose()
    return states


# --- ours ---------------------------------------------------------------------------------------------------


async def ours_rebuild(url: str, rooms: list[str], pause_gc: bool = True) -> dict[str, list[Any]]:
    redis = connect(url)
    try:
        return await replay_many(redis, rooms, PROJECTIONS, pause_gc=pause_gc)
    finally:
        await redis.aclose()


async def ours_replay_per_room(url: str, rooms: list[str]) -> int:
    redis = connect(url)
    try:
        for room in rooms:
            for p in PROJECTIONS:
                await replay(redis, room, p)
    finally:
        await redis.aclose()
    return len(rooms)


async def ours_consumers(url: str) -> int:
    redis = connect(url)
    try:
        applied = 0
        for p in PROJECTIONS:
            applied += await ProjectionRunner(redis, p, lease_ms=120_000).run(until_caught_up=True)
        return applied
    finally:
        await redis.aclose()


def summary_ours(part: Any, call: Any) -> dict[str, Any]:
    p = msgspec.to_builtins(part)
    c = msgspec.to_builtins(call)
    return _summary(p, c)


def _summary(p: dict[str, Any], c: dict[str, Any]) -> dict[str, Any]:
    return {
        "present": sorted(p["present"]), "left": sorted((k, v["reason"], v["kind"]) for k, v in p["left"].items()),
        "people": {k: (v["joins"], v["rejoins"], v["messages"], v["bytes"], round(v["seconds"], 6))
                   for k, v in p["people"].items()},
        "counters": p["counters"], "bot": p["bot"], "last_seq": p["last_seq"],
        "tracks": {k: (len(v["audio"]), len(v["video"])) for k, v in p["present"].items()},
        "call": (c["state"], c["phase"], list(c["remote"]), c["counters"], len(c["history"]),
                 c["cause"]["event"] if c["cause"] else None),
    }


# --- the run ------------------------------------------------------------------------------------------------


def start_redis(workdir: Path):
    """A private redis-server on a free loopback port (the test harness's RedisServer, no persistence)."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.harness.redis_server import RedisServer

    return RedisServer(workdir / "redis", appendonly=False).start()


def timed(fn, *args: Any) -> tuple[float, Any]:
    gc.collect()
    t = time.perf_counter()
    result = asyncio.run(fn(*args))
    return time.perf_counter() - t, result


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    server = start_redis(tmp)
    try:
        asyncio.run(check_format(server.url))
        t = time.perf_counter()
        events, rooms = load(server.port, args.events, args.rooms, args.seed)
        load_s = time.perf_counter() - t
        timed(ours_rebuild, server.url, rooms[:50])  # warm up both (connections, caches), untimed
        timed(naive_rebuild, server.url, rooms[:50])
        ours_s, naive_s = [], []
        ours = naive = None
        for _ in range(args.rounds):  # alternate, best of each
            ours = naive = None
            seconds, ours = timed(ours_rebuild, server.url, rooms)
            ours_s.append(seconds)
            seconds, naive = timed(naive_rebuild, server.url, rooms)
            naive_s.append(seconds)
        assert ours is not None and naive is not None
        disagree = [room for room in rooms if summary_ours(*ours[room]) != _summary(*naive[room])]
        ours = naive = None
        info: dict[str, float] = {}
        if not args.quick:
            seconds, _ = timed(ours_rebuild, server.url, rooms, False)
            info["ours_gc_on_events_per_s"] = events / seconds
            seconds, _ = timed(ours_replay_per_room, server.url, rooms)
            info["replay_per_room_events_per_s"] = events / seconds
            seconds, applied = timed(ours_consumers, server.url)
            if applied != events * len(PROJECTIONS):
                raise RuntimeError(f"consumers applied {applied}, expected {events * len(PROJECTIONS)}")
            info["consumers_events_per_s"] = events / seconds
        version = asyncio.run(_redis_version(server.url))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    ours_eps, naive_eps = events / min(ours_s), events / min(naive_s)
    ratio = ours_eps / naive_eps
    return {
        "events": events,
        "rooms": len(rooms),
        "projections": [p.name for p in PROJECTIONS],
        "redis_version": version,
        "python": sys.version.split()[0],
        "load_seconds": round(load_s, 2),
        "ours_events_per_s": round(ours_eps),
        "naive_events_per_s": round(naive_eps),
        "ratio": round(ratio, 2),
        "target_ratio": TARGET_RATIO,
        "states_agree": not disagree,
        "disagreeing_rooms": disagree[:5],
        "pass": ratio >= TARGET_RATIO and not disagree,
        "ours_seconds": [round(x, 3) for x in ours_s],
        "naive_seconds": [round(x, 3) for x in naive_s],
        **{k: round(v) for k, v in info.items()},
    }


async def _redis_version(url: str) -> str:
    redis = connect(url)
    try:
        return str((await redis.info("server"))["redis_version"])
    finally:
        await redis.aclose()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--rooms", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per contender; the best counts")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="skip the informational per-room replay and consumers")
    args = p.parse_args()
    if args.events < args.rooms * 8:
        p.error("need at least 8 events per room (a call needs a start and an end)")
    result = run(args)
    print(json.dumps(result))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
