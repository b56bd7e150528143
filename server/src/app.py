"""`ltc-stream serve`: one port for the web client, /health, /metrics and the WebSocket /ws that
carries WebRTC signalling, prompts and stats (the protocol is documented in the README).

Generation runs in a thread per stream (ltc_stream.stream.StreamGenerator); a frame pump paces
frames at the content frame rate; each viewer gets a paced aiortc video track. The event loop
only routes messages, so a slow model never blocks the network.

Admission (`StreamServer._admit`): a browser page must come from an allowed Origin; an address
has at most `max_per_address` sockets; a socket holds a viewer slot while it receives video, or
for at most `offer_deadline` seconds while it negotiates, and negotiating sockets are capped for
all addresses together. Every refusal is `{"type": "error", "code", "message"}` and a close; no
refusal and no fault of one stream touches another viewer.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

import torch
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ltc_stream.cli import add_model_arguments, load_model_from_args
from ltc_stream.errors import ConfigError, LTCStreamError
from ltc_stream.models.base import VideoModel
from ltc_stream.stream import DEFAULT_PROMPT, PROMPT_CHANGE_OPTIONS, StreamGenerator

from .metrics import Metrics
from .track import FramePump, PacedVideoTrack

log = logging.getLogger("ltc_stream.server")

STATIC = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/style.css": "style.css"}
SOCKET_BUFFER_BYTES = 256 * 1024  # per WebSocket, instead of the kernel's autotuning up to megabytes
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
    video_bitrate: int = 1_500_000  # each sender's starting bitrate (aiortc clamps VP8 to 0.25-1.5 Mbit/s)
    # --- admission: a slot is held by a viewer receiving video, or for at most offer_deadline
    # seconds by one negotiating. Sockets still negotiating are capped for all addresses together
    # (default half the slots, so bare sockets never hold every slot) and every address is capped
    # below that (so one address cannot hold the whole negotiating allowance either).
    offer_deadline: float = 10.0
    max_negotiating: int | None = None  # None: max(2, max_viewers // 2)
    max_per_address: int = 2
    allowed_origins: tuple[str, ...] = ()  # besides this server's own origin and localhost at its port
    # --- abuse and slow clients
    error_burst: int = 20  # refused messages a connection may send (refilled 1 per second) before it is closed
    offer_rate: float = 0.5  # offers per second per address (burst 3): each one builds a peer connection
    outbox_messages: int = 32  # messages queued for a viewer's socket; more are dropped and counted
    send_timeout: float = 10.0  # a viewer whose socket takes no message for this long is closed
    max_faults: int = 3  # model faults in a row after which a stream stops (viewers are told, others unaffected)
    ice_servers: tuple[str, ...] = ()  # STUN/TURN URLs (see parse_ice_server), for aiortc and for the page

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
        if not 0.5 <= self.offer_deadline <= 300:
            raise ConfigError(f"--offer-deadline must be between 0.5 and 300 seconds, got {self.offer_deadline}")
        if self.max_negotiating is not None and not 1 <= self.max_negotiating <= 1000:
            raise ConfigError(f"--max-negotiating must be between 1 and 1000, got {self.max_negotiating}")
        if not 1 <= self.max_per_address <= 1000:
            raise ConfigError(f"--max-per-address must be between 1 and 1000, got {self.max_per_address}")
        for origin in self.allowed_origins:
            normalise_origin(origin)
        for url in self.ice_servers:
            parse_ice_server(url)

    @property
    def negotiating_limit(self) -> int:
        return self.max_negotiating or max(2, self.max_viewers // 2)


def normalise_origin(origin: str) -> str:
    """`scheme://host[:port]`, lower case, default ports dropped: how browsers send `Origin`."""
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query:
        raise ConfigError(f"--allowed-origin must look like https://booth.example.org[:port], got {origin!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default_port = {"http": 80, "https": 443}[parts.scheme]
    port = parts.port if parts.port not in (None, default_port) else None
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


ICE_SCHEMES = ("stun", "stuns", "turn", "turns")


def parse_ice_server(url: str) -> RTCIceServer:
    """`stun:host[:port]`, or `turn:USER:PASSWORD@host[:port][?transport=udp|tcp]` (also turns:):
    the credentials in the URL, percent-encoded where they contain ':' or '@'."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() not in ICE_SCHEMES or not rest:
        raise ConfigError(f"--ice-server must be stun:HOST[:PORT] or turn:USER:PASSWORD@HOST[:PORT], got {_redact(url)!r}")
    scheme = scheme.lower()
    username = credential = None
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        username, sep, credential = userinfo.partition(":")
        if not username or not sep or not credential:
            raise ConfigError(f"--ice-server credentials must be USER:PASSWORD@, got {_redact(url)!r}")
        username, credential = unquote(username), unquote(credential)
    host = rest.split("?", 1)[0]
    if not host or host.startswith(":"):
        raise ConfigError(f"--ice-server needs a host, got {_redact(url)!r}")
    if scheme.startswith("turn") and username is None:
        raise ConfigError(f"--ice-server: a TURN server needs USER:PASSWORD@ before its host, got {_redact(url)!r}")
    return RTCIceServer(urls=f"{scheme}:{rest}", username=username, credential=credential)


def _redact(url: str) -> str:
    """An ICE URL without its credentials, for messages and logs."""
    scheme, _, rest = url.partition(":")
    return f"{scheme}:***@{rest.rsplit('@', 1)[1]}" if "@" in rest else url


class TokenBucket:
    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()

    def take(self) -> bool:
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def full(self) -> bool:
        self._refill()
        return self.tokens >= self.burst

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now


class ClientError(LTCStreamError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class Stream:
    """One generator, its frame pump, and the viewers watching it."""

    def __init__(self, model: VideoModel, cfg: ServerConfig, metrics: Metrics, seed: int, prompt: str):
        self.generator = StreamGenerator(model, prompt=prompt, seed=seed, ltc=cfg.ltc,
                                         queue_chunks=cfg.queue_chunks, blend_chunks=cfg.blend_chunks,
                                         prompt_change=cfg.prompt_change, max_faults=cfg.max_faults)
        self.pump = FramePump(self.generator, cfg.fps or model.fps, metrics, on_chunk=self._on_chunk)
        self.viewers: set[Viewer] = set()
        self.last_latency_ms: float | None = None
        self.reported_faults = 0
        self.started = False
        self._shown_prompt_id = 0

    def _on_chunk(self, chunk) -> None:
        if chunk.prompt_id != self._shown_prompt_id:
            self._shown_prompt_id = chunk.prompt_id
            self.last_latency_ms = (time.perf_counter() - chunk.prompt_received) * 1000.0

    def start(self) -> None:
        if not self.started:
            self.started = True
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
    """One WebSocket: negotiating until its peer connection is up, then watching."""

    ws: ServerConnection
    address: str
    stream: Stream | None  # per-viewer mode: made at the first offer, started once video is up
    prompt: str
    metrics: Metrics
    outbox: asyncio.Queue
    messages: TokenBucket
    prompts: TokenBucket
    offers: TokenBucket
    errors: TokenBucket
    operator: bool = False
    pc: RTCPeerConnection | None = None
    watching: bool = False
    deadline: asyncio.Task | None = None
    sender: asyncio.Task | None = None

    def send(self, message: dict[str, Any], last: bool = False) -> bool:
        """Queue a message without waiting: a viewer that stops reading never holds up the others.
        A full outbox drops the message (counted); the `last` one before a close drops the oldest."""
        if last and self.outbox.full():
            self.outbox.get_nowait()
            self.outbox.task_done()
            self.metrics.messages_dropped.inc()
        try:
            self.outbox.put_nowait(json.dumps(message))
            return True
        except asyncio.QueueFull:
            self.metrics.messages_dropped.inc()
            return False


class StreamServer:
    def __init__(self, model: VideoModel, config: ServerConfig | None = None):
        self.model = model
        self.cfg = config or ServerConfig()
        self.cfg.validate()
        self.ice_servers = [parse_ice_server(url) for url in self.cfg.ice_servers]
        self.metrics = Metrics()
        self.viewers: set[Viewer] = set()
        self.shared: Stream | None = None
        self._server = None
        self._stats_task: asyncio.Task | None = None
        self._streams_made = 0
        # per address, not per connection: a new socket must not bring a fresh allowance of offers
        self._offer_budgets: dict[str, TokenBucket] = {}
        self.port: int | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        threads = self.cfg.threads or max(1, (os.cpu_count() or 2) - 1)
        torch.set_num_threads(threads)
        if self.cfg.mode == "shared":
            self.shared = self._new_stream(self.cfg.prompt)
            self.shared.start()
        # websockets' DEBUG log carries message contents (operator tokens among them): never below WARNING
        ws_log = logging.getLogger("ltc_stream.server.websocket")
        ws_log.setLevel(max(logging.WARNING, ws_log.getEffectiveLevel()))
        self._server = await serve(
            self._handle_ws, self.cfg.host, self.cfg.port, process_request=self._http,
            max_size=max(1 << 20, 2 * self.cfg.max_message_bytes), ping_interval=20, close_timeout=2,
            logger=ws_log,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._stats_task = asyncio.create_task(self._stats_loop())

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}/"

    async def stop(self, timeout: float = 5.0) -> None:
        """Tell every viewer goodbye, close them and the streams, within about `timeout` seconds."""
        if self._stats_task:
            self._stats_task.cancel()
        if self._server:
            self._server.close(close_connections=False)  # no new sockets; ours are closed below
        goodbye = {"type": "goodbye", "code": "shutting_down", "message": "the server is shutting down"}
        viewers = list(self.viewers)
        for viewer in viewers:
            viewer.send(goodbye, last=True)
        await asyncio.wait([asyncio.create_task(self._close_viewer(v, flush=True, close_code=1001)) for v in viewers]
                           or [asyncio.create_task(asyncio.sleep(0))], timeout=timeout)
        if self.shared:
            await self.shared.stop()
        if self._server:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout)
            except TimeoutError:
                log.warning("some sockets did not close within %.0f s", timeout)

    def _new_stream(self, prompt: str) -> Stream:
        self._streams_made += 1
        seed = self.cfg.seed + (0 if self.cfg.mode == "shared" else self._streams_made)
        return Stream(self.model, self.cfg, self.metrics, seed, prompt)

    # --- HTTP ---------------------------------------------------------------------------------
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        # Every HTTP endpoint only reads (websockets serves GET alone); state changes go through
        # /ws, whose Origin is checked in _admit.
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
                "watching": self.watching, "fps": round(fps, 2), "ltc": self.cfg.ltc, "mode": self.cfg.mode}

    @property
    def watching(self) -> int:
        return sum(v.watching for v in self.viewers)

    def _streams(self) -> list[Stream]:
        streams = {v.stream for v in self.viewers if v.stream is not None}
        if self.shared:
            streams.add(self.shared)
        return list(streams)

    def _refresh_gauges(self) -> None:
        streams = [s for s in self._streams() if s.started]
        self.metrics.viewers.set(len(self.viewers))
        self.metrics.negotiating.set(len(self.viewers) - self.watching)
        self.metrics.streams.set(len(streams))
        if streams:
            self.metrics.generation_fps.set(sum(s.generator.stats.fps for s in streams) / len(streams))
            self.metrics.calls_per_chunk.set(sum(s.generator.stats.calls_per_chunk for s in streams) / len(streams))
            self.metrics.queue_depth.set(sum(s.generator.queue_depth for s in streams))

    # --- admission ----------------------------------------------------------------------------
    def own_origins(self) -> set[str]:
        hosts = {"localhost", "127.0.0.1", "[::1]"}
        if self.cfg.host not in ("0.0.0.0", "::", ""):
            hosts.add(f"[{self.cfg.host}]" if ":" in self.cfg.host else self.cfg.host)
        own = {f"{scheme}://{host}:{self.port}" for host in hosts for scheme in ("http", "https")}
        return own | {normalise_origin(o) for o in self.cfg.allowed_origins}

    def origin_allowed(self, origin: str | None, host_header: str | None) -> bool:
        """Browsers always send Origin with a WebSocket; other clients (aiortc, scripts) send none
        and cannot be steered by a foreign page, so no Origin passes. A page served by this server
        from an address (http://192.168.1.20:8080) passes as the same origin as the Host it asked;
        a host *name* must be listed (--allowed-origin): a foreign name can be rebound to our address."""
        if origin is None:
            return True
        try:
            origin = normalise_origin(origin)
        except ConfigError:  # "null" (sandboxed frames, files) and other non-web origins
            return False
        if origin in self.own_origins():
            return True
        if host_header:
            hostname = urlsplit(origin).hostname or ""
            try:
                ipaddress.ip_address(hostname)
            except ValueError:
                return False
            return origin.split("://", 1)[1] == host_header.lower() and urlsplit(origin).port == self.port
        return False

    def _admit(self, ws: ServerConnection) -> tuple[str, str] | None:
        """None if this socket may negotiate, else (code, message) saying why not."""
        headers = ws.request.headers
        origins = headers.get_all("Origin")
        if len(origins) > 1 or not self.origin_allowed(origins[0] if origins else None, headers.get("Host")):
            return ("origin_not_allowed", "this server does not accept connections from pages of other sites "
                                          "(the operator can add an origin with --allowed-origin)")
        address = ws.remote_address[0] if ws.remote_address else "?"
        if sum(v.address == address for v in self.viewers) >= self.cfg.max_per_address:
            return ("address_limit", f"at most {self.cfg.max_per_address} connections from one address; "
                                     "close another tab first")
        if len(self.viewers) >= self.cfg.max_viewers:
            return ("server_full", f"the server has its maximum of {self.cfg.max_viewers} viewers; try again later")
        if len(self.viewers) - self.watching >= self.cfg.negotiating_limit:
            return ("busy", "too many viewers are connecting right now; try again in a few seconds")
        return None

    def _offer_budget(self, address: str) -> TokenBucket:
        if len(self._offer_budgets) > 1024:  # a refilled budget is as good as a new one: forget those
            self._offer_budgets = {a: b for a, b in self._offer_budgets.items() if not b.full()}
        return self._offer_budgets.setdefault(address, TokenBucket(self.cfg.offer_rate, 3))

    # --- WebSocket ----------------------------------------------------------------------------
    async def _handle_ws(self, ws: ServerConnection) -> None:
        refusal = self._admit(ws)
        if refusal is not None:
            code, message = refusal
            self.metrics.refusals.labels(code).inc()
            log.info("refused a connection: %s", code)
            try:
                await asyncio.wait_for(ws.send(json.dumps({"type": "error", "code": code, "message": message})), 2)
            except (ConnectionClosed, TimeoutError):
                pass
            await ws.close(1008 if code == "origin_not_allowed" else 1013, code)
            return
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:  # signalling is small: a fixed kernel buffer bounds what a non-reader can pin
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
        cfg = self.cfg
        viewer = Viewer(ws, ws.remote_address[0] if ws.remote_address else "?", self.shared, cfg.prompt, self.metrics,
                        outbox=asyncio.Queue(cfg.outbox_messages),
                        messages=TokenBucket(cfg.message_rate, 2 * cfg.message_rate),
                        prompts=TokenBucket(cfg.prompt_rate, cfg.prompt_burst),
                        offers=self._offer_budget(ws.remote_address[0] if ws.remote_address else "?"),
                        errors=TokenBucket(1.0, cfg.error_burst))
        self.viewers.add(viewer)
        if viewer.stream is not None:
            viewer.stream.viewers.add(viewer)
        self.metrics.viewers.set(len(self.viewers))
        viewer.sender = asyncio.create_task(self._send_loop(viewer))
        self._arm_deadline(viewer)
        try:
            viewer.send(self._hello(viewer))
            async for raw in ws:
                try:
                    await self._on_message(viewer, raw)
                except LTCStreamError as exc:  # ClientError, and model errors such as a prompt it cannot encode
                    self.metrics.errors.labels(exc.code).inc()
                    viewer.send({"type": "error", "code": exc.code, "message": str(exc)})
                    if not viewer.errors.take():  # repeated abuse: this connection is closed
                        await self._drop(viewer, "too_many_errors", "too many refused messages; connection closed")
                        return
        except ConnectionClosed:
            pass
        finally:
            await self._close_viewer(viewer)

    def _hello(self, viewer: Viewer) -> dict[str, Any]:
        return {"type": "hello", "model": self.model.describe(), "mode": self.cfg.mode, "ltc": self.cfg.ltc,
                "prompt": viewer.stream.generator.prompt if viewer.stream else viewer.prompt, "steer": self.cfg.steer,
                "ice_servers": [{k: v for k, v in vars(s).items() if k != "credentialType" and v is not None}
                                for s in self.ice_servers],
                "limits": {"max_prompt_chars": self.cfg.max_prompt_chars, "prompt_rate": self.cfg.prompt_rate,
                           "max_message_bytes": self.cfg.max_message_bytes, "offer_deadline": self.cfg.offer_deadline}}

    async def _send_loop(self, viewer: Viewer) -> None:
        try:
            while True:
                text = await viewer.outbox.get()
                await asyncio.wait_for(viewer.ws.send(text), self.cfg.send_timeout)
                viewer.outbox.task_done()
        except TimeoutError:  # it stopped reading: free its slot rather than buffer for it
            self.metrics.refusals.labels("stalled").inc()
            log.info("closing a viewer that stopped reading")
            viewer.ws.transport.abort()
        except ConnectionClosed:
            pass

    def _arm_deadline(self, viewer: Viewer) -> None:
        if viewer.deadline:
            viewer.deadline.cancel()
        viewer.deadline = asyncio.create_task(self._expire(viewer))

    async def _expire(self, viewer: Viewer) -> None:
        await asyncio.sleep(self.cfg.offer_deadline)
        if not viewer.watching:
            await self._drop(viewer, "offer_timeout",
                             f"no video connection within {self.cfg.offer_deadline:g} s; reload the page to try again")

    async def _drop(self, viewer: Viewer, code: str, message: str, close_code: int = 1008) -> None:
        """Refuse an admitted viewer: an error with a code, then close; nobody else is touched."""
        self.metrics.refusals.labels(code).inc()
        log.info("closing a viewer: %s", code)
        viewer.send({"type": "error", "code": code, "message": message}, last=True)
        await self._close_viewer(viewer, flush=True, close_code=close_code, reason=code)

    async def _close_viewer(self, viewer: Viewer, flush: bool = False, close_code: int = 1000,
                            reason: str = "") -> None:
        if viewer not in self.viewers:
            return
        self.viewers.discard(viewer)
        if viewer.deadline and viewer.deadline is not asyncio.current_task():
            viewer.deadline.cancel()
        stream = viewer.stream
        if stream is not None:
            stream.viewers.discard(viewer)
        self.metrics.viewers.set(len(self.viewers))
        if flush:  # the last messages (an error, a goodbye) go out before the close, if the socket takes them
            try:
                await asyncio.wait_for(viewer.outbox.join(), 2.0)
            except TimeoutError:
                pass
        if viewer.sender:
            viewer.sender.cancel()
        if viewer.pc is not None:
            await viewer.pc.close()
        if stream is not None and stream is not self.shared and not stream.viewers:
            await stream.stop()
        try:
            await asyncio.wait_for(viewer.ws.close(close_code, reason), 3.0)
        except Exception:  # already closed, broken or not reading: nothing left to release
            viewer.ws.transport.abort()

    async def _on_message(self, viewer: Viewer, raw: str | bytes) -> None:
        if len(raw) > self.cfg.max_message_bytes:
            raise ClientError("message_too_large", f"messages are limited to {self.cfg.max_message_bytes} bytes, got {len(raw)}")
        if not viewer.messages.take():
            raise ClientError("rate_limited", f"more than {self.cfg.message_rate:g} messages per second; slow down")
        if isinstance(raw, bytes):
            raise ClientError("bad_message", "binary messages are not accepted; send JSON text")
        try:
            msg = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as exc:
            where = f": {exc.msg} at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
            raise ClientError("bad_json", f"message is not valid JSON{where}") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise ClientError("bad_message", 'messages are JSON objects with a string "type"')
        handler = {"offer": self._on_offer, "prompt": self._on_prompt, "auth": self._on_auth,
                   "set": self._on_set, "ping": self._on_ping}.get(msg["type"])
        if handler is None:
            raise ClientError("unknown_type", f"unknown message type {msg['type'][:40]!r} (offer, prompt, auth, set, ping)")
        await handler(viewer, msg)

    async def _on_ping(self, viewer: Viewer, msg: dict) -> None:
        viewer.send({"type": "pong", "t": msg.get("t")})

    async def _on_offer(self, viewer: Viewer, msg: dict) -> None:
        sdp = msg.get("sdp")
        if not isinstance(sdp, str) or not sdp.startswith("v=0"):
            raise ClientError("bad_sdp", 'an offer needs "sdp": a session description starting with "v=0"')
        if not viewer.offers.take():
            raise ClientError("rate_limited", f"at most {self.cfg.offer_rate:g} offers per second; wait a moment")
        if viewer.pc is not None:  # renegotiation from scratch: one peer connection per viewer
            old, viewer.pc = viewer.pc, None
            await old.close()
        if viewer.watching:  # negotiating again: the offer deadline applies again
            viewer.watching = False
            self._arm_deadline(viewer)
        pc = viewer.pc = RTCPeerConnection(RTCConfiguration(iceServers=self.ice_servers or None))

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if viewer.pc is not pc or viewer not in self.viewers:
                return
            if pc.connectionState == "connected":
                self._now_watching(viewer)
            elif pc.connectionState in ("failed", "closed"):
                if viewer.watching:
                    viewer.watching = False
                    self._arm_deadline(viewer)
                if pc.connectionState == "failed":
                    await pc.close()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if not any(t.kind == "video" for t in pc.getTransceivers()):
                raise ValueError("the offer has no video media section")
            if viewer.stream is None:  # per-viewer: its generator starts once the video is up
                viewer.stream = self._new_stream(viewer.prompt)
                viewer.stream.viewers.add(viewer)
            track = PacedVideoTrack(viewer.stream.pump, self.metrics, bitrate=self.cfg.video_bitrate)
            track.sender = pc.addTrack(track)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises ValueError and friends for SDP it cannot use
            await pc.close()
            if viewer.pc is pc:
                viewer.pc = None
            raise ClientError("bad_sdp", f"the offer could not be used: {str(exc)[:200]}") from None
        if viewer.pc is pc:
            viewer.send({"type": "answer", "sdp": pc.localDescription.sdp})

    def _now_watching(self, viewer: Viewer) -> None:
        viewer.watching = True
        if viewer.deadline:
            viewer.deadline.cancel()
            viewer.deadline = None
        if viewer.stream is not None:
            viewer.stream.start()

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
        if viewer.stream is None:  # per-viewer, before any video: the stream will start with it
            await asyncio.to_thread(self.model.encode_prompt, text)  # an encoder error surfaces now
            viewer.prompt, chunk = text, 0
        else:
            chunk = await asyncio.to_thread(viewer.stream.set_prompt, text)
        self.metrics.prompts.inc()
        viewer.send({"type": "prompt_ack", "text": text, "chunk": chunk})
        for other in (viewer.stream.viewers if viewer.stream else set()) - {viewer}:
            other.send({"type": "prompt_changed", "text": text, "chunk": chunk})

    async def _on_auth(self, viewer: Viewer, msg: dict) -> None:
        token = msg.get("token")
        expected = self.cfg.operator_token
        # constant time: the reply's timing says nothing about how much of a guess was right
        if not expected or not isinstance(token, str) or not hmac.compare_digest(token.encode(), expected.encode()):
            raise ClientError("forbidden", "wrong operator token")
        viewer.operator = True
        viewer.send({"type": "auth_ok", "operator": True})

    async def _on_set(self, viewer: Viewer, msg: dict) -> None:
        """Server-wide settings: operator only."""
        if not viewer.operator:
            raise ClientError("forbidden", "changing server settings needs the operator token (send an auth message first)")
        if "ltc" not in msg or not isinstance(msg["ltc"], bool):
            raise ClientError("bad_message", 'set accepts {"ltc": true|false}')
        self.cfg.ltc = msg["ltc"]
        for stream in self._streams():
            stream.generator.ltc = self.cfg.ltc
        viewer.send({"type": "settings", "ltc": self.cfg.ltc})

    async def _check_faults(self) -> None:
        """Tell each faulted stream's viewers; a stream that failed for good loses only its viewers."""
        for stream in self._streams():
            generator = stream.generator
            if generator.stats.errors > stream.reported_faults:
                stream.reported_faults = generator.stats.errors
                self.metrics.stream_faults.inc()
                if not generator.failed:
                    for viewer in stream.viewers:
                        viewer.send({"type": "error", "code": "stream_fault",
                                     "message": "the model failed on a chunk; the stream restarted from a clean state"})
            if generator.failed:
                log.error("a stream stopped: %s", generator.last_error)
                if stream is self.shared:  # the booth goes on with a fresh stream for whoever comes next
                    self.shared = self._new_stream(self.cfg.prompt)
                    self.shared.start()
                message = (f"the model failed {generator.max_faults} times in a row; this stream stopped "
                           "(reload to start a new one)")
                drops = [self._drop(v, "stream_failed", message, close_code=1011) for v in list(stream.viewers)]
                # each drop waits (bounded) for its viewer to take the message: not in the stats loop
                asyncio.create_task(_after(asyncio.gather(*drops), stream.stop()))

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._refresh_gauges()
            try:
                await self._check_faults()
            except Exception:  # the loop must outlive any one stream's trouble
                log.exception("fault check failed")
            for viewer in list(self.viewers):
                if viewer.stream is None:
                    continue
                stats = viewer.stream.generator.stats
                viewer.send({
                    "type": "stats", "generation_fps": round(stats.fps, 2),
                    "model_calls_per_chunk": round(stats.calls_per_chunk, 2),
                    "steps_per_chunk": self.model.steps, "ltc": viewer.stream.generator.ltc,
                    "ltc_speedup": round(stats.ltc_speedup, 3), "queue_depth": viewer.stream.generator.queue_depth,
                    "viewers": len(self.viewers), "chunk": viewer.stream.pump.chunk_index,
                    "prompt": viewer.stream.generator.prompt, "latency_ms": viewer.stream.last_latency_ms,
                    "content_fps": viewer.stream.pump.fps,
                })


async def _after(first, then) -> None:
    await first
    await then


def _response(status: int, body: bytes, content_type: str) -> Response:
    reason = {200: "OK", 404: "Not Found"}.get(status, "")
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store"), ("Connection", "close")])
    return Response(status, reason, headers, body)


# --- CLI -------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "ltc-stream serve [options]"
    model = add_model_arguments(parser)
    model.add_argument("--fps", type=float, default=None, help="content frame rate (default: the model's)")
    model.add_argument("--compile", action="store_true",
                       help="torch.compile the network and warm it up before serving (GPUs)")
    network = parser.add_argument_group("network and security")
    network.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    network.add_argument("--port", type=int, default=8080, help="HTTP and WebSocket port (default 8080)")
    network.add_argument("--operator-token", default=os.environ.get("LTC_OPERATOR_TOKEN"), metavar="TOKEN",
                         help="unlocks operator actions (or env LTC_OPERATOR_TOKEN)")
    network.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                         help="also accept pages of this origin (repeatable; own origin always)")
    network.add_argument("--ice-server", action="append", default=[], metavar="URL",
                         help="stun:HOST[:PORT] or turn:USER:PASS@HOST[:PORT] (repeatable; page too)")
    network.add_argument("--video-bitrate", type=int, default=1_500_000, metavar="BPS",
                         help="each viewer's starting VP8 bitrate (default 1.5 Mbit/s)")
    network.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                         metavar="LEVEL", help="debug, info (default), warning, error")
    sessions = parser.add_argument_group("sessions")
    sessions.add_argument("--mode", choices=["shared", "per-viewer"], default="shared", metavar="MODE",
                          help="shared: one stream for all (a booth); per-viewer: one each")
    sessions.add_argument("--steer", choices=["anyone", "operator"], default="anyone", metavar="WHO",
                          help="shared mode: who may change the prompt (anyone, operator)")
    sessions.add_argument("--max-viewers", type=int, default=8, metavar="N", help="viewers at once (default 8)")
    sessions.add_argument("--max-per-address", type=int, default=2, metavar="N",
                          help="connections from one address (default 2)")
    sessions.add_argument("--max-negotiating", type=int, default=None, metavar="N",
                          help="connections still setting up video (default: half the viewers)")
    sessions.add_argument("--offer-deadline", type=float, default=10.0, metavar="S",
                          help="seconds a connection may take to get video (default 10)")
    sessions.add_argument("--prompt", default=DEFAULT_PROMPT, metavar="TEXT", help="the prompt streams start with")
    sessions.add_argument("--seed", type=int, default=0, metavar="N", help="noise seed of the first stream")
    sessions.add_argument("--on-prompt-change", choices=PROMPT_CHANGE_OPTIONS, default="auto", metavar="HOW",
                          help="cut (a fresh scene), blend (morph), auto (the model's choice)")


def connection_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"allowed_origins": tuple(args.allowed_origin), "ice_servers": tuple(args.ice_server),
            "offer_deadline": args.offer_deadline, "max_per_address": args.max_per_address,
            "max_negotiating": args.max_negotiating, "video_bitrate": args.video_bitrate}


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # websockets logs a line per HTTP request at INFO and message contents at DEBUG (tokens among them)
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))


def main(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)

    cfg = ServerConfig(host=args.host, port=args.port, fps=args.fps, mode=args.mode, steer=args.steer,
                       max_viewers=args.max_viewers, operator_token=args.operator_token, ltc=not args.no_ltc,
                       seed=args.seed, prompt=args.prompt,
                       prompt_change=args.on_prompt_change, **connection_options(args))
    cfg.validate()
    print(f"loading model {args.model!r} ...", flush=True)
    model = load_model_from_args(args)
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
    await server.stop(timeout=3.0)  # viewers get a goodbye; a generator stuck in a long chunk is a daemon thread
