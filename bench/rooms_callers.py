"""The callers of ``bench/rooms.py``: one process, many ``livekit.rtc`` Rooms, one caller per room.

    python bench/rooms_callers.py --url ws://HOST:PORT [--sample-rate 16000] [--frame-ms 100]

Driven over pipes, one JSON object per line. Commands on stdin::

    {"op": "join", "room": R}     join R as caller-<R>, publish a tone, send a data message every second
    {"op": "leave", "room": R}    leave R
    {"op": "start_data", "room": R}  start R's data messages (with --data-on-command; else they start a second
                                  after the bot appears)
    {"op": "stop_data", "room": R}  stop R's data messages (the tone goes on)
    {"op": "stats"}               answer with {"ev": "stats", ...} (``sent_by_room``: data messages sent per room)
    {"op": "quit"}                leave every room and exit

Events on stdout: ``joined`` (room, seconds it took), ``bot`` (room, identity: another participant is in the room;
the bench's rooms hold nobody but the caller and the bot), ``bot_left``, ``error`` (room, error), ``left``,
``stats``. The tone is pre-generated: one frame of ``--frame-ms`` (a whole number of periods, so the same frame
repeats seamlessly), captured again and again, so a caller costs one FFI request per frame and nothing else in
Python. Each data message (topic ``bench``, reliable) carries its send time: ``time.time()`` as ASCII text; they
start once the bot is in the room. Callers do not subscribe to the bot's audio (``auto_subscribe=False``): they
are load, not listeners. The process's own event-loop lag is sampled every 100 ms and reported with ``stats``.

Only the LiveKit URL the bench gives is contacted (loopback or the bench's network namespace).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(1, str(REPO_ROOT))

import numpy as np
from livekit import rtc

# The dev stack's key "secret" is short on purpose; PyJWT warns about it for every token.
warnings.filterwarnings("ignore", message="The HMAC key is")

from supervisor.devstack.participant import mint_token

TOPIC = "bench"
TONE_HZ = 400.0  # a whole number of periods in every allowed frame length (20-100 ms in 10 ms steps)
JOIN_CONCURRENCY = 4  # joins at once: each is a signalling round trip and two peer connections
DATA_PERIOD = 1.0
BOT_PREFIX = "rs-bot-"  # transport.tokens.BOT_PREFIX: our bots and the baseline's
BOT_GRACE = 1.0


def out(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def tone_frame(sample_rate: int, frame_ms: int) -> rtc.AudioFrame:
    n = sample_rate * frame_ms // 1000
    t = np.arange(n) / sample_rate
    samples = (0.3 * 32767 * np.sin(2 * math.pi * TONE_HZ * t)).astype(np.int16)
    return rtc.AudioFrame(samples.tobytes(), sample_rate, 1, n)


class Caller:
    def __init__(self, owner: Callers, room: str) -> None:
        self.owner, self.name = owner, room
        self.identity = f"caller-{room}"
        self.room = rtc.Room()
        self.tasks: list[asyncio.Task] = []
        self.source: rtc.AudioSource | None = None
        self.others: set[str] = set()
        self.data_sent = 0
        self.sending = True
        self.go = asyncio.Event()  # start_data

    async def join(self) -> None:
        o = self.owner
        started = time.monotonic()
        self.room.on("participant_connected", self._arrived)
        self.room.on("participant_disconnected", self._gone)
        token = mint_token(self.name, self.identity)
        await asyncio.wait_for(self.room.connect(o.url, token, rtc.RoomOptions(auto_subscribe=False)), 30)
        for identity in list(self.room.remote_participants):
            self._arrived_identity(identity)
        self.source = rtc.AudioSource(o.sample_rate, 1, queue_size_ms=max(200, 3 * o.frame_ms))
        track = rtc.LocalAudioTrack.create_audio_track("tone", self.source)
        await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._tone()), loop.create_task(self._data())]
        out({"ev": "joined", "room": self.name, "seconds": round(time.monotonic() - started, 3)})

    def _arrived(self, p: rtc.RemoteParticipant) -> None:
        self._arrived_identity(p.identity)

    def _arrived_identity(self, identity: str) -> None:
        if identity not in self.others:
            self.others.add(identity)
            out({"ev": "bot", "room": self.name, "identity": identity})

    def _gone(self, p: rtc.RemoteParticipant) -> None:
        self.others.discard(p.identity)
        out({"ev": "bot_left", "room": self.name, "identity": p.identity})

    async def _tone(self) -> None:
        frame, source = self.owner.frame, self.source
        assert source is not None
        while True:
            await source.capture_frame(frame)  # returns once the SDK's queue has room: real time
            self.owner.frames += 1

    async def _data(self) -> None:
        # Only once the bot can receive (a message sent before reaches nobody, and the bench checks that every
        # message sent is recorded): with --data-on-command when told so (the bench has seen the bot's
        # `connected`), else a second after the bot appears; then spread over the second so the rooms do not
        # all send at once.
        if self.owner.data_on_command:
            await self.go.wait()
        else:
            while not any(i.startswith(BOT_PREFIX) for i in self.others):
                await asyncio.sleep(0.1)
            await asyncio.sleep(BOT_GRACE)
        await asyncio.sleep(random.random() * DATA_PERIOD)
        lp = self.room.local_participant
        next_at = time.monotonic()
        while self.sending:
            await lp.publish_data(f"{time.time():.6f}".encode(), reliable=True, topic=TOPIC)
            self.owner.data_sent += 1
            self.data_sent += 1
            next_at += DATA_PERIOD
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def stop_data(self) -> None:
        """No more data messages; returns once the last one was handed to the SDK (not cancelled mid-send,
        so ``data_sent`` is exact)."""
        self.sending = False
        if len(self.tasks) == 2:
            await asyncio.wait([self.tasks[1]], timeout=5)

    async def leave(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.room.disconnect(), 10)
        if self.source is not None:
            with contextlib.suppress(Exception):
                await self.source.aclose()


class Callers:
    def __init__(self, args: argparse.Namespace) -> None:
        self.url = args.url
        self.data_on_command = args.data_on_command
        self.sample_rate, self.frame_ms = args.sample_rate, args.frame_ms
        self.frame = tone_frame(args.sample_rate, args.frame_ms)
        self.rooms: dict[str, Caller] = {}
        self.joining = asyncio.Semaphore(JOIN_CONCURRENCY)
        self.frames = self.data_sent = self.errors = 0
        self.sent_by_room: dict[str, int] = {}  # rooms this process has left keep their count
        self.lags: list[float] = []  # this process's own event-loop lag, sampled every 100 ms
        self.pending: set[asyncio.Task] = set()

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def join(self, room: str) -> None:
        async with self.joining:
            caller = Caller(self, room)
            self.rooms[room] = caller
            try:
                await caller.join()
            except Exception as exc:  # noqa: BLE001 - reported; the bench counts it as a problem
                self.errors += 1
                out({"ev": "error", "room": room, "error": repr(exc)[:300]})
                self.rooms.pop(room, None)
                await caller.leave()

    async def leave(self, room: str) -> None:
        caller = self.rooms.pop(room, None)
        if caller is not None:
            await caller.leave()
            self.sent_by_room[room] = caller.data_sent
        out({"ev": "left", "room": room})

    async def monitor(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + 0.1
            await asyncio.sleep(0.1)
            self.lags.append(max(0.0, loop.time() - expected))

    def stats(self) -> dict:
        lags = sorted(self.lags)
        self.lags.clear()
        p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else None
        return {"ev": "stats", "pid": os.getpid(), "rooms": len(self.rooms), "frames": self.frames,
                "data_sent": self.data_sent, "errors": self.errors,
                "sent_by_room": self.sent_by_room | {room: c.data_sent for room, c in self.rooms.items()},
                "loop_lag_p99": round(p99, 4) if p99 is not None else None,
                "loop_lag_max": round(lags[-1], 4) if lags else None}


async def main(args: argparse.Namespace) -> None:
    callers = Callers(args)
    loop = asyncio.get_running_loop()
    monitor = loop.create_task(callers.monitor())
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out({"ev": "ready", "pid": os.getpid()})
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        op = cmd.get("op")
        if op == "join":
            callers.spawn(callers.join(cmd["room"]))
        elif op == "leave":
            callers.spawn(callers.leave(cmd["room"]))
        elif op == "start_data":
            caller = callers.rooms.get(cmd["room"])
            if caller is not None:
                caller.go.set()
        elif op == "stop_data":
            caller = callers.rooms.get(cmd["room"])
            if caller is not None:
                callers.spawn(caller.stop_data())
        elif op == "stats":
            out(callers.stats())
        elif op == "quit":
            break
    for task in list(callers.pending):
        task.cancel()
    await asyncio.gather(*(c.leave() for c in list(callers.rooms.values())), return_exceptions=True)
    monitor.cancel()
    out({"ev": "bye"})


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the LiveKit server (ws://...)")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--frame-ms", type=int, default=100, choices=range(20, 101, 10), metavar="20..100")
    p.add_argument("--data-on-command", action="store_true",
                   help="send data messages only after {\"op\": \"start_data\"} for the room")
    return p.parse_args()


if __name__ == "__main__":
    args = parse_args()
    try:
        import uvloop

        uvloop.run(main(args))
    except ImportError:
        asyncio.run(main(args))
    # The rtc FFI's exit-time dispose can abort a process that closed its rooms (see supervisor serve): leave now.
    sys.stdout.flush()
    os._exit(0)
