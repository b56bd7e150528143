"""`ltc-stream serve`: one port for the web client, /health, /metrics and the WebSocket /ws that
carries WebRTC signalling, prompts and stats (the protocol is documented in the README).

Generation runs in a thread per stream (ltc_stream.stream.StreamGenerator); a frame pump paces
frames at the content frame rate; each viewer gets a paced aiortc video track. The event loop
only routes messages, so a slow model never blocks the network.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
from aiortc import RTCPeerConnection, RTCSessionDescription
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ltc_stream.errors import ConfigError, LTCStreamError
from ltc_stream.models.base import VideoModel
from ltc_stream.stream import DEFAULT_PROMPT, PROMPT_CHANGE_OPTIONS, StreamGenerator

from .metrics import Metrics
from .track import FramePump, PacedVideoTrack

log = logging.getLogger("ltc_stream.server")

STATIC = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/style.css": "style.css"}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    fps: float | None = None  # None: the model's own frame rate
    mode: str = "shared"  # shared | per-viewer
    steer: str = "anyone"  # anyone | operator (shared mode: who may change the prompt)
    max_viewers: int = 8
    operator_token: str | None = None
    ltc: bool = True
    seed: int = 0
    prompt: str = DEFAULT_PROMPT
    max_prompt_chars: int = 300
    prompt_rate: float = 2.0  # prompts per second per connection (burst: prompt_burst)
    prompt_burst: int = 4
    message_rate: float = 20.0  # messages per second per connection (burst: 2x)
    max_message_bytes: int = 64 * 1024  # larger messages are refused with an error
    queue_chunks: int = 2
    blend_chunks: int = 2
    prompt_change: str = "auto"  # cut | blend | auto: the model's own (ltc_stream.stream.Steering)
    threads: int | None = None  # torch threads for generation (default: cores - 1)
    video_bitrate: int = 1_500_000

    def validate(self) -> None:
        if self.mode not in ("shared", "per-viewer"):
            raise ConfigError(f"--mode must be shared or per-viewer, got {self.mode!r}")
        if self.steer not in ("anyone", "operator"):
            raise ConfigError(f"--steer must be anyone or operator, got {self.steer!r}")
        if self.steer == "operator" and not self.operator_token:
            raise ConfigError("--steer operator needs --operator-token")
        if not 1 <= self.max_viewers <= 1000:
            raise ConfigError(f"--max-viewers must be between 1 and 1000, got {self.max_viewers}")
        if self.fps is not None and not 1 <= self.fps <= 60:
            raise ConfigError(f"--fps must be between 1 and 60, got {self.fps}")
        if self.prompt_change not in PROMPT_CHANGE_OPTIONS:
            raise ConfigError(f"--on-prompt-change must be auto, cut or blend, got {self.prompt_change!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, got {self.port}")


class TokenBucket:
    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ClientError(LTCStreamError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class Stream:
    """One generator, its frame pump, and the viewers watching it."""

    def __init__(self, model: VideoModel, cfg: ServerConfig, metrics: Metrics, seed: int):
        self.generator = StreamGenerator(model, prompt=cfg.prompt, seed=seed, ltc=cfg.ltc,
                                         queue_chunks=cfg.queue_chunks, blend_chunks=cfg.blend_chunks,
                                         prompt_change=cfg.prompt_change)
        self.pump = FramePump(self.generator, cfg.fps or model.fps, metrics, on_chunk=self._on_chunk)
        self.viewers: set[Viewer] = set()
        self.last_latency_ms: float | None = None
        self._shown_prompt_id = 0

    def _on_chunk(self, chunk) -> None:
        if chunk.prompt_id != self._shown_prompt_id:
            self._shown_prompt_id = chunk.prompt_id
            self.last_latency_ms = (time.perf_counter() - chunk.prompt_received) * 1000.0

    def start(self) -> None:
        self.generator.start()
        self.pump.start()

    async def stop(self) -> None:
        await self.pump.stop()
        await asyncio.to_thread(self.generator.stop)

    def set_prompt(self, text: str) -> int:
        chunk = self.generator.set_prompt(text)
        self.pump.discard_pending()
        return chunk


@dataclass(eq=False)
class Viewer:
    ws: ServerConnection
    stream: Stream
    operator: bool = False
    pc: RTCPeerConnection | None = None
    messages: TokenBucket = field(default=None)  # type: ignore[assignment]
    prompts: TokenBucket = field(default=None)  # type: ignore[assignment]

    async def send(self, message: dict[str, Any]) -> None:
        try:
            await self.ws.send(json.dumps(message))
        except ConnectionClosed:
            pass


class StreamServer:
    def __init__(self, model: VideoModel, config: ServerConfig | None = None):
        self.model = model
        self.cfg = config or ServerConfig()
        self.cfg.validate()
        self.metrics = Metrics()
        self.viewers: set[Viewer] = set()
        self.shared: Stream | None = None
        self._server = None
        self._stats_task: asyncio.Task | None = None
        self.port: int | None = None
        self._configure_video()

    def _configure_video(self) -> None:
        # aiortc's VP8 encoder starts at 500 kbit/s and clamps to 1.5 Mbit/s; set it on purpose.
        from aiortc.codecs import vpx

        vpx.DEFAULT_BITRATE = min(self.cfg.video_bitrate, vpx.MAX_BITRATE)

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        threads = self.cfg.threads or max(1, (os.cpu_count() or 2) - 1)
        torch.set_num_threads(threads)
        if self.cfg.mode == "shared":
            self.shared = Stream(self.model, self.cfg, self.metrics, self.cfg.seed)
            self.shared.start()
        self._server = await serve(
            self._handle_ws, self.cfg.host, self.cfg.port, process_request=self._http,
            max_size=max(1 << 20, 2 * self.cfg.max_message_bytes), ping_interval=20,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._stats_task = asyncio.create_task(self._stats_loop())

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}/"

    async def stop(self) -> None:
        if self._stats_task:
            self._stats_task.cancel()
        for viewer in list(self.viewers):
            await self._close_viewer(viewer)
        if self.shared:
            await self.shared.stop()
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    # --- HTTP ---------------------------------------------------------------------------------
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            return None  # continue with the WebSocket handshake
        if path in STATIC:
            name = STATIC[path]
            body = resources.files("ltc_stream.client_web").joinpath(name).read_bytes()
            return _response(200, body, CONTENT_TYPES[os.path.splitext(name)[1]])
        if path == "/healthz":  # liveness, for load balancers and CI: answers once the model is loaded
            return _response(200, b"ok\n", "text/plain; charset=utf-8")
        if path == "/health":
            return _response(200, json.dumps(self.health()).encode(), "application/json")
        if path == "/metrics":
            self._refresh_gauges()
            return _response(200, self.metrics.render(), self.metrics.content_type)
        return _response(404, b"not found\n", "text/plain; charset=utf-8")

    def health(self) -> dict[str, Any]:
        streams = self._streams()
        fps = sum(s.generator.stats.fps for s in streams) / len(streams) if streams else 0.0
        return {"status": "ok", "model": self.model.describe(), "viewers": len(self.viewers),
                "fps": round(fps, 2), "ltc": self.cfg.ltc, "mode": self.cfg.mode}

    def _streams(self) -> list[Stream]:
        streams = {v.stream for v in self.viewers}
        if self.shared:
            streams.add(self.shared)
        return list(streams)

    def _refresh_gauges(self) -> None:
        streams = self._streams()
        self.metrics.viewers.set(len(self.viewers))
        if streams:
            self.metrics.generation_fps.set(sum(s.generator.stats.fps for s in streams) / len(streams))
            self.metrics.calls_per_chunk.set(sum(s.generator.stats.calls_per_chunk for s in streams) / len(streams))
            self.metrics.queue_depth.set(sum(s.generator.queue_depth for s in streams))

    # --- WebSocket ----------------------------------------------------------------------------
    async def _handle_ws(self, ws: ServerConnection) -> None:
        if len(self.viewers) >= self.cfg.max_viewers:
            await ws.send(json.dumps({"type": "error", "code": "server_full",
                                      "message": f"the server has its maximum of {self.cfg.max_viewers} viewers; try again later"}))
            await ws.close(1013, "server full")
            return
        stream = self.shared or Stream(self.model, self.cfg, self.metrics, self.cfg.seed + len(self.viewers) + 1)
        viewer = Viewer(ws, stream, messages=TokenBucket(self.cfg.message_rate, 2 * self.cfg.message_rate),
                        prompts=TokenBucket(self.cfg.prompt_rate, self.cfg.prompt_burst))
        if stream is not self.shared:
            stream.start()
        self.viewers.add(viewer)
        stream.viewers.add(viewer)
        self.metrics.viewers.set(len(self.viewers))
        try:
            await viewer.send(self._hello(viewer))
            async for raw in ws:
                try:
                    await self._on_message(viewer, raw)
                except ClientError as exc:
                    self.metrics.errors.labels(exc.code).inc()
                    await viewer.send({"type": "error", "code": exc.code, "message": str(exc)})
                except LTCStreamError as exc:
                    self.metrics.errors.labels(exc.code).inc()
                    await viewer.send({"type": "error", "code": exc.code, "message": str(exc)})
        except ConnectionClosed:
            pass
        finally:
            await self._close_viewer(viewer)

    def _hello(self, viewer: Viewer) -> dict[str, Any]:
        return {"type": "hello", "model": self.model.describe(), "mode": self.cfg.mode, "ltc": self.cfg.ltc,
                "prompt": viewer.stream.generator.prompt, "steer": self.cfg.steer,
                "limits": {"max_prompt_chars": self.cfg.max_prompt_chars, "prompt_rate": self.cfg.prompt_rate,
                           "max_message_bytes": self.cfg.max_message_bytes}}

    async def _close_viewer(self, viewer: Viewer) -> None:
        if viewer not in self.viewers:
            return
        self.viewers.discard(viewer)
        viewer.stream.viewers.discard(viewer)
        self.metrics.viewers.set(len(self.viewers))
        if viewer.pc is not None:
            await viewer.pc.close()
        if viewer.stream is not self.shared:
            await viewer.stream.stop()
        try:
            await viewer.ws.close()
        except Exception:  # already closed or broken: nothing left to release
            pass

    async def _on_message(self, viewer: Viewer, raw: str | bytes) -> None:
        if len(raw) > self.cfg.max_message_bytes:
            raise ClientError("message_too_large", f"messages are limited to {self.cfg.max_message_bytes} bytes, got {len(raw)}")
        if not viewer.messages.take():
            raise ClientError("rate_limited", f"more than {self.cfg.message_rate:g} messages per second; slow down")
        if isinstance(raw, bytes):
            raise ClientError("bad_message", "binary messages are not accepted; send JSON text")
        try:
            msg = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ClientError("bad_json", f"message is not valid JSON: {exc.msg} at character {exc.pos}") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise ClientError("bad_message", 'messages are JSON objects with a string "type"')
        handler = {"offer": self._on_offer, "prompt": self._on_prompt, "auth": self._on_auth,
                   "set": self._on_set, "ping": self._on_ping}.get(msg["type"])
        if handler is None:
            raise ClientError("unknown_type", f"unknown message type {msg['type']!r} (offer, prompt, auth, set, ping)")
        await handler(viewer, msg)

    async def _on_ping(self, viewer: Viewer, msg: dict) -> None:
        await viewer.send({"type": "pong", "t": msg.get("t")})

    async def _on_offer(self, viewer: Viewer, msg: dict) -> None:
        sdp = msg.get("sdp")
        if not isinstance(sdp, str) or not sdp.startswith("v=0"):
            raise ClientError("bad_sdp", 'an offer needs "sdp": a session description starting with "v=0"')
        if viewer.pc is not None:  # renegotiation from scratch: one peer connection per viewer
            await viewer.pc.close()
        pc = viewer.pc = RTCPeerConnection()

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState == "failed":
                await pc.close()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if not any(t.kind == "video" for t in pc.getTransceivers()):
                raise ValueError("the offer has no video media section")
            pc.addTrack(PacedVideoTrack(viewer.stream.pump, self.metrics))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises ValueError and friends for SDP it cannot use
            await pc.close()
            viewer.pc = None
            raise ClientError("bad_sdp", f"the offer could not be used: {exc}") from None
        await viewer.send({"type": "answer", "sdp": pc.localDescription.sdp})

    async def _on_prompt(self, viewer: Viewer, msg: dict) -> None:
        text = msg.get("text")
        if not isinstance(text, str):
            raise ClientError("bad_message", 'a prompt needs "text": a string')
        text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
        if not text:
            raise ClientError("prompt_empty", "the prompt is empty")
        if len(text) > self.cfg.max_prompt_chars:
            raise ClientError("prompt_too_long", f"prompts are limited to {self.cfg.max_prompt_chars} characters, got {len(text)}")
        if self.cfg.mode == "shared" and self.cfg.steer == "operator" and not viewer.operator:
            raise ClientError("forbidden", "on this booth only the operator can change the prompt")
        if not viewer.prompts.take():
            raise ClientError("rate_limited", f"at most {self.cfg.prompt_rate:g} prompts per second; wait a moment")
        chunk = await asyncio.to_thread(viewer.stream.set_prompt, text)
        self.metrics.prompts.inc()
        await viewer.send({"type": "prompt_ack", "text": text, "chunk": chunk})
        for other in viewer.stream.viewers - {viewer}:
            await other.send({"type": "prompt_changed", "text": text, "chunk": chunk})

    async def _on_auth(self, viewer: Viewer, msg: dict) -> None:
        token = msg.get("token")
        if not self.cfg.operator_token or not isinstance(token, str) or token != self.cfg.operator_token:
            raise ClientError("forbidden", "wrong operator token")
        viewer.operator = True
        await viewer.send({"type": "auth_ok", "operator": True})

    async def _on_set(self, viewer: Viewer, msg: dict) -> None:
        """Server-wide settings: operator only."""
        if not viewer.operator:
            raise ClientError("forbidden", "changing server settings needs the operator token (send an auth message first)")
        if "ltc" not in msg or not isinstance(msg["ltc"], bool):
            raise ClientError("bad_message", 'set accepts {"ltc": true|false}')
        self.cfg.ltc = msg["ltc"]
        for stream in self._streams():
            stream.generator.ltc = self.cfg.ltc
        await viewer.send({"type": "settings", "ltc": self.cfg.ltc})

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._refresh_gauges()
            for viewer in list(self.viewers):
                stats = viewer.stream.generator.stats
                await viewer.send({
                    "type": "stats", "generation_fps": round(stats.fps, 2),
                    "model_calls_per_chunk": round(stats.calls_per_chunk, 2),
                    "steps_per_chunk": self.model.steps, "ltc": viewer.stream.generator.ltc,
                    "ltc_speedup": round(stats.ltc_speedup, 3), "queue_depth": viewer.stream.generator.queue_depth,
                    "viewers": len(self.viewers), "chunk": viewer.stream.pump.chunk_index,
                    "prompt": viewer.stream.generator.prompt, "latency_ms": viewer.stream.last_latency_ms,
                    "content_fps": viewer.stream.pump.fps,
                })


def _response(status: int, body: bytes, content_type: str) -> Response:
    reason = {200: "OK", 404: "Not Found"}.get(status, "")
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store"), ("Connection", "close")])
    return Response(status, reason, headers, body)


# --- CLI -------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="default, a built-in name, or a local model folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--fps", type=float, default=None, help="content frame rate (default: the model's, 16)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps per chunk (default: the model's)")
    parser.add_argument("--no-ltc", action="store_true", help="run every sampling step (no LTC-Accel)")
    parser.add_argument("--mode", choices=["shared", "per-viewer"], default="shared",
                        help="shared: one stream for every viewer (a booth); per-viewer: a stream each")
    parser.add_argument("--steer", choices=["anyone", "operator"], default="anyone",
                        help="shared mode: who may change the prompt")
    parser.add_argument("--max-viewers", type=int, default=8)
    parser.add_argument("--operator-token", default=os.environ.get("LTC_OPERATOR_TOKEN"),
                        help="token for server-wide changes (or env LTC_OPERATOR_TOKEN)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt the stream starts with")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--on-prompt-change", choices=PROMPT_CHANGE_OPTIONS, default="auto",
                        help="cut: a new prompt starts a fresh scene at the next chunk; blend: the scene morphs "
                             "into it over two chunks; auto: the model's choice (the default model cuts)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model's network (regionally where it repeats blocks, as Wan does) and "
                             "warm it up before taking viewers; for GPUs: 1.2x (Wan) to 1.5x (AnimateDiff) measured, "
                             "seconds to minutes of compiling at start-up")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per HTTP request is noise
    from ltc_stream.models import load_model

    cfg = ServerConfig(host=args.host, port=args.port, fps=args.fps, mode=args.mode, steer=args.steer,
                       max_viewers=args.max_viewers, operator_token=args.operator_token, ltc=not args.no_ltc,
                       seed=args.seed, prompt=args.prompt,
                       prompt_change=args.on_prompt_change)
    cfg.validate()
    options = {"steps": args.steps} if args.steps else {}
    print(f"loading model {args.model!r} ...", flush=True)
    model = load_model(args.model, device=args.device, **options)
    if args.compile:
        from ltc_stream.models.speed import compile_network, warm_up

        what = compile_network(model, "compile")
        if what is None:
            raise ConfigError(f"--compile: {model.name} has no network to compile")
        print(f"compiling {what} and warming up ...", flush=True)
        print(f"warm in {warm_up(model, ltc=cfg.ltc, prompt=cfg.prompt):.1f} s", flush=True)
    asyncio.run(_serve(model, cfg))
    return 0


async def _serve(model: VideoModel, cfg: ServerConfig) -> None:
    server = StreamServer(model, cfg)
    await server.start()
    print(f"ltc-stream: serving {model.name} at {server.url}  (Ctrl-C to stop)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("ltc-stream: shutting down", flush=True)
    await server.stop()
