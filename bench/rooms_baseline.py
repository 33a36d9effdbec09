"""The baseline of ``bench/rooms.py``: process-per-call, one plain pipecat bot per room in a process of its own.

    python bench/rooms_baseline.py --url ws://HOST:PORT --room R --pipeline listen|echo

What a competent pipecat user writes for one call: pipecat's own ``LiveKitTransport`` (not our recording
subclass), ``transport.input() -> the processors of our built-in pipeline -> transport.output()``, the
transport parameters of the daemon's default audio format (``transport.audio.AudioFormat().params``), run by
pipecat's ``WorkerRunner`` on pipecat's default event loop (stock asyncio). The same processors as our
built-ins (``transport.pipelines``): ``echo`` = ``EchoAudio``; ``listen`` = ``DiscardAudio`` with audio input on,
because pipecat queues subscribed audio without bound when audio input is off. Nothing is recorded anywhere.

It prints one JSON object per line on stdout: ``connected``, ``participant`` (a participant joined: the caller),
``data`` (a data message reached the ``on_data_received`` handler; ``latency`` = now - the send time the caller
put in it, seconds) and ``ended``. SIGTERM ends it (pipecat's runner cancels the pipeline; the bot leaves).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(1, str(REPO_ROOT))

warnings.filterwarnings("ignore", message="The HMAC key is")  # the dev stack's short key, on purpose

from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.transports.livekit.transport import LiveKitTransport
from pipecat.workers.runner import WorkerRunner

from supervisor.devstack.livekit_server import API_KEY, API_SECRET
from transport.audio import AudioFormat
from transport.pipelines import DiscardAudio, EchoAudio
from transport.tokens import bot_identity, bot_token

PROCESSORS = {"echo": EchoAudio, "listen": DiscardAudio}


def out(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    audio = AudioFormat()
    identity = bot_identity()
    token = bot_token(API_KEY, API_SECRET, args.room, identity)
    transport = LiveKitTransport(args.url, token, args.room, audio.params(audio_in=True))
    worker = PipelineWorker(
        Pipeline([transport.input(), PROCESSORS[args.pipeline](), transport.output()]),
        params=PipelineParams(audio_in_sample_rate=audio.in_sample_rate, audio_out_sample_rate=audio.out_sample_rate),
        enable_turn_tracking=False, enable_rtvi=False, idle_timeout_secs=None)

    @transport.event_handler("on_connected")
    async def _connected(_transport) -> None:
        out({"ev": "connected", "identity": identity})

    @transport.event_handler("on_participant_connected")
    async def _participant(_transport, participant_id: str) -> None:
        out({"ev": "participant", "participant": participant_id})

    @transport.event_handler("on_data_received")
    async def _data(_transport, data: bytes, _participant_id: str | None) -> None:
        now = time.time()
        try:
            out({"ev": "data", "latency": round(now - float(bytes(data)), 6)})
        except ValueError:
            out({"ev": "data", "latency": None})

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(runner.cancel(reason="SIGTERM")))
    await runner.run()
    out({"ev": "ended"})


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--pipeline", choices=sorted(PROCESSORS), required=True)
    asyncio.run(main(p.parse_args()))
    sys.stdout.flush()
    os._exit(0)  # the rtc FFI's exit-time dispose can abort a process that left its room cleanly
