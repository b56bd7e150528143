"""Prometheus metrics, one registry per server (tests run several servers in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.chunks = Counter("ltc_chunks_generated", "Chunks generated", registry=r)
        self.generation_fps = Gauge("ltc_generation_fps", "Generation frames per second (recent chunks)", registry=r)
        self.calls_per_chunk = Gauge("ltc_model_calls_per_chunk", "Denoiser calls per chunk (recent chunks)", registry=r)
        self.steps_skipped = Counter("ltc_steps_skipped", "Sampling steps estimated by LTC instead of a model call", registry=r)
        self.queue_depth = Gauge("ltc_queue_depth", "Chunks waiting between generator and video track", registry=r)
        self.viewers = Gauge("ltc_viewers", "Connected viewers", registry=r)
        self.frames_sent = Counter("ltc_frames_sent", "Frames handed to video tracks", registry=r)
        self.frames_dropped = Counter("ltc_frames_dropped", "Frames a viewer's encoder skipped because it ran slower than the clock", registry=r)
        self.frames_repeated = Counter("ltc_frames_repeated", "Frames repeated because generation ran slow", registry=r)
        self.prompts = Counter("ltc_prompts", "Prompts accepted", registry=r)
        self.errors = Counter("ltc_client_errors", "Client messages refused, by code", ["code"], registry=r)
        self.refusals = Counter("ltc_connections_refused", "Connections refused or closed by the server, by code",
                                ["code"], registry=r)
        self.negotiating = Gauge("ltc_viewers_negotiating", "Connected viewers whose video is not up yet", registry=r)
        self.streams = Gauge("ltc_streams", "Streams generating", registry=r)
        self.messages_dropped = Counter("ltc_messages_dropped", "Messages to a viewer dropped because it was not reading",
                                        registry=r)
        self.stream_faults = Counter("ltc_stream_faults", "Chunks the model failed on (exception or NaN)", registry=r)
        self.prompt_latency = Histogram(
            "ltc_prompt_to_screen_seconds", "From a prompt's arrival to its first frame leaving the server",
            buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0), registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
