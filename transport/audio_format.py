"""The audio format of a session's pipeline: what the daemon's ``[audio]`` settings say (pipecat-free, so that
the settings and the CLI can check it without importing pipecat). :mod:`transport.audio` says why these values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SAMPLE_RATES = (8000, 16000, 24000, 44100, 48000)
FRAME_MS = (10, 20, 40, 60, 80, 100)


@dataclass(frozen=True)
class AudioFormat:
    in_sample_rate: int = 16000  # what the pipeline's input frames carry (the rtc SDK resamples to it)
    out_sample_rate: int = 24000  # what the pipeline speaks (the bot's published track)
    frame_ms: int = 20  # length of one input frame; output goes out in captures of max(40, frame_ms) ms

    def __post_init__(self) -> None:
        for name in ("in_sample_rate", "out_sample_rate"):
            if getattr(self, name) not in SAMPLE_RATES:
                raise ValueError(f"{name} must be one of {', '.join(map(str, SAMPLE_RATES))}, not "
                                 f"{getattr(self, name)!r}")
        if self.frame_ms not in FRAME_MS:
            raise ValueError(f"frame_ms must be one of {', '.join(map(str, FRAME_MS))}, not {self.frame_ms!r}")

    def params(self, *, audio_in: bool, audio_out: bool = True) -> Any:
        """pipecat's ``LiveKitParams`` for this format; ``audio_in`` False: the pipeline hears nothing,
        ``audio_out`` False: it says nothing."""
        from pipecat.transports.livekit.transport import LiveKitParams  # here: importing this module stays light

        return LiveKitParams(
            audio_in_enabled=audio_in,
            audio_out_enabled=audio_out,
            audio_in_sample_rate=self.in_sample_rate,
            audio_out_sample_rate=self.out_sample_rate,
            audio_in_user_tracks=False,
            audio_out_10ms_chunks=max(4, self.frame_ms // 10),  # captures of 40 ms or more: 10 ms ones cost 2x
            audio_out_end_silence_secs=0,
        )
