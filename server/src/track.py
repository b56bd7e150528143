"""Pacing: one clock per stream publishes frames at the content frame rate; every viewer's video
track sends each published frame with its timestamp. Slow generation repeats the last frame;
nothing is sent in bursts."""
from __future__ import annotations

import asyncio
import fractions
import logging
import time
from typing import Callable

import av
import numpy as np
from aiortc import MediaStreamTrack

from ltc_stream.stream import Chunk, StreamGenerator

from .metrics import Metrics

log = logging.getLogger(__name__)
VIDEO_CLOCK = 90000  # RTP video clock rate


class FramePump:
    """Pulls chunks from a StreamGenerator and publishes one frame per 1/fps seconds."""

    def __init__(self, generator: StreamGenerator, fps: float, metrics: Metrics,
                 on_chunk: Callable[[Chunk], None] | None = None):
        self.generator = generator
        self.fps = fps
        self.metrics = metrics
        self.on_chunk = on_chunk
        self.frame_index = -1
        self.frame: np.ndarray | None = None
        self.chunk_index = -1
        self.prompt_id = 0
        self.received_fps = 0.0
        self._pending: list[np.ndarray] = []
        self._new_frame = asyncio.Condition()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="frame-pump")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def discard_pending(self) -> int:
        """Drop frames of the current chunk not yet shown (a new prompt makes them stale)."""
        n = len(self._pending)
        self._pending.clear()
        return n

    async def _run(self) -> None:
        period = 1.0 / self.fps
        start = time.perf_counter()
        tick = 0
        while True:
            if not self._pending:
                chunk = self.generator.get_chunk()
                if chunk is not None:
                    self._take(chunk)
            if self._pending:
                self.frame = self._pending.pop(0)
            elif self.frame is not None:
                self.metrics.frames_repeated.inc()  # generation is behind: hold the last frame
            if self.frame is not None:
                self.frame_index += 1
                async with self._new_frame:
                    self._new_frame.notify_all()
            self.metrics.queue_depth.set(self.generator.queue_depth)
            tick += 1
            delay = start + tick * period - time.perf_counter()
            if delay < -1.0:  # the loop stalled: resynchronise instead of bursting to catch up
                start, tick, delay = time.perf_counter(), 0, 0.0
            await asyncio.sleep(max(0.0, delay))

    def _take(self, chunk: Chunk) -> None:
        self._pending = list(chunk.frames)
        self.chunk_index = chunk.index
        self.metrics.chunks.inc()
        self.metrics.steps_skipped.inc(chunk.result.skipped)
        if chunk.prompt_id != self.prompt_id:
            self.prompt_id = chunk.prompt_id
            self.metrics.prompt_latency.observe(time.perf_counter() - chunk.prompt_received)
        if self.on_chunk:
            self.on_chunk(chunk)

    async def wait_frame(self, after: int) -> tuple[int, np.ndarray]:
        async with self._new_frame:
            await self._new_frame.wait_for(lambda: self.frame_index > after and self.frame is not None)
            return self.frame_index, self.frame


class PacedVideoTrack(MediaStreamTrack):
    """A viewer's outgoing video: the pump's frames, each exactly once, pts from the frame index."""

    kind = "video"

    def __init__(self, pump: FramePump, metrics: Metrics, bitrate: int | None = None):
        super().__init__()
        self.pump = pump
        self.metrics = metrics
        self.bitrate = bitrate  # the encoder's starting bitrate; the receiver's estimates (REMB) steer it after
        self.sender = None  # the RTCRtpSender sending this track (set by whoever adds it)
        self.applied_bitrate: int | None = None
        self._last = -1
        self._first_index: int | None = None
        self._time_base = fractions.Fraction(1, VIDEO_CLOCK)

    async def recv(self) -> av.VideoFrame:
        if self.bitrate and self.applied_bitrate is None:
            self._apply_bitrate()
        index, image = await self.pump.wait_frame(self._last)
        if self._first_index is None:
            self._first_index = index
        skipped = index - self._last - 1 if self._last >= 0 else 0
        self._last = index
        if skipped > 0:
            self.metrics.frames_dropped.inc(skipped)  # the encoder was slower than the clock
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = int(round((index - self._first_index) * VIDEO_CLOCK / self.pump.fps))
        frame.time_base = self._time_base
        self.metrics.frames_sent.inc()
        return frame

    def _apply_bitrate(self) -> None:
        """Set this sender's encoder bitrate. aiortc has no public per-sender bitrate (its
        RTCRtpSender.setParameters takes no encodings) and creates the encoder after the first
        frame, so this runs from the second recv() on. Never aiortc's module-level DEFAULT_BITRATE:
        that would change every server's streams in the process."""
        encoder = getattr(self.sender, "_RTCRtpSender__encoder", None)
        if encoder is not None and hasattr(encoder, "target_bitrate"):
            encoder.target_bitrate = self.bitrate  # the encoder clamps it to its codec's range
            self.applied_bitrate = encoder.target_bitrate
