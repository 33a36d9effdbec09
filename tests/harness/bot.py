"""A pipecat ``LiveKitTransport`` echo bot run by ``WorkerRunner`` (pipecat 1.14 names, no deprecated ones)."""

from __future__ import annotations

import asyncio
import contextlib

from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.livekit.transport import LiveKitParams, LiveKitTransport
from pipecat.workers.runner import WorkerRunner

from .participant import SAMPLE_RATE, mint_token
from .util import async_wait_until


class EchoAudio(FrameProcessor):
    """Input audio becomes output audio: ``transport.input() -> transport.output()`` alone plays nothing."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            out = OutputAudioRawFrame(audio=frame.audio, sample_rate=frame.sample_rate, num_channels=frame.num_channels)
            await self.push_frame(out, direction)
        else:
            await self.push_frame(frame, direction)


class EchoBot:
    """Joins ``room`` as ``identity`` and echoes what it hears. Records data received and lifecycle events."""

    def __init__(self, url: str, room: str, identity: str = "echo-bot"):
        self.url, self.room, self.identity = url, room, identity
        self.data: list[tuple[bytes, str | None]] = []
        self.events: list[str] = []
        self.connected = asyncio.Event()
        params = LiveKitParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=SAMPLE_RATE,
            audio_out_sample_rate=SAMPLE_RATE,
        )
        self.transport = LiveKitTransport(url, mint_token(room, identity), room, params)
        pipeline = Pipeline([self.transport.input(), EchoAudio(), self.transport.output()])
        self.worker = PipelineWorker(
            pipeline,
            params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE, audio_out_sample_rate=SAMPLE_RATE),
            idle_timeout_secs=None,
            enable_rtvi=False,
        )
        self.runner: WorkerRunner | None = None
        self._run_task: asyncio.Task | None = None

        @self.transport.event_handler("on_connected")
        async def _on_connected(_transport):
            self.events.append("connected")
            self.connected.set()

        @self.transport.event_handler("on_data_received")
        async def _on_data(_transport, data: bytes, participant_id: str | None):
            self.data.append((bytes(data), participant_id))

        @self.transport.event_handler("on_participant_connected")
        async def _on_participant(_transport, participant_id: str):
            self.events.append(f"participant_connected:{participant_id}")

    async def start(self, timeout: float = 30.0) -> EchoBot:
        self.runner = WorkerRunner(handle_sigint=False)
        await self.runner.add_workers(self.worker)
        self._run_task = asyncio.get_running_loop().create_task(self.runner.run(), name=f"bot-runner:{self.identity}")
        waiter = asyncio.ensure_future(self.connected.wait())
        try:
            done, _ = await asyncio.wait({waiter, self._run_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        if not self.connected.is_set():
            await self.stop()
            raise TimeoutError(f"bot {self.identity} did not connect within {timeout}s")
        return self

    async def stop(self, timeout: float = 20.0) -> None:
        """Cancel the pipeline (leaves the room at once) and wait for the runner to finish."""
        if self.runner is None or self._run_task is None:
            return
        if not self._run_task.done():
            await self.runner.cancel(reason="test teardown")
            try:
                await asyncio.wait_for(asyncio.shield(self._run_task), timeout)
            except TimeoutError:
                self._run_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._run_task
                raise
        exc = self._run_task.exception() if not self._run_task.cancelled() else None
        self.runner, self._run_task = None, None
        if exc is not None:
            raise exc

    async def wait_for_data(self, payload: bytes, timeout: float = 10.0) -> tuple[bytes, str | None]:
        def find():
            return next((d for d in self.data if d[0] == payload), None)

        return await async_wait_until(find, timeout, f"bot to receive {payload!r}")
