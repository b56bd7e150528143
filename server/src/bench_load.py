"""`ltc-stream bench load`: the server under load, attack and faults, on loopback only, bounded in
count and time. Prints one JSON object: for each scenario the load applied, what held, what was
lost, and this process's resource deltas (RSS, file descriptors, threads; server and clients
share the process, so a leak on either side shows).

Scenarios: churn (viewers come and go, some abruptly, beside a long-lived viewer), lockout
(bare sockets that never offer, re-opened as fast as they are refused or expire), flood (one
client sends messages as fast as it can), fuzz (Hypothesis, seeded: the message schema, raw text
and bytes, and mutated SDP), slow_reader (a client that stops reading), model_fault (per-viewer:
one stream's model fails), capacity (viewers at the content frame rate, shared and per-viewer),
soak (minutes of viewers, prompts and churn, RSS and descriptors sampled).

Each scenario starts its own server on a background thread's event loop (as a separate server
would run) with the synthetic model below; clients run on this thread. Other visitors are
stood for by other loopback addresses (127.0.0.x)."""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import logging
import os
import socket
import struct
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ltc_stream.errors import ConfigError, NonFiniteError
from ltc_stream.models.base import ChunkResult, VideoModel

from .app import ServerConfig, StreamServer

FAULT_PROMPT = "inject a model fault"  # SyntheticModel: every chunk of this prompt has a NaN
SCENARIOS = ("churn", "lockout", "flood", "fuzz", "slow_reader", "model_fault", "capacity", "soak")
TARGET_FPS = 16.0


class SyntheticModel(VideoModel):
    """A model that costs `chunk_seconds` of sleep per chunk (so it leaves the CPU to the server),
    paints a colour chosen by the prompt with a moving bar, and fails like a real model (a NaN:
    NonFiniteError) on every chunk of FAULT_PROMPT."""

    name = "synthetic-load-model"
    height = width = 96
    fps = TARGET_FPS
    frames_per_chunk = 4
    steps = 4
    device = torch.device("cpu")

    def __init__(self, chunk_seconds: float = 0.05):
        self.chunk_seconds = chunk_seconds

    def encode_prompt(self, text: str) -> torch.Tensor:
        if text == FAULT_PROMPT:
            return torch.full((3,), float("nan"))
        rgb = zlib.crc32(text.encode()).to_bytes(4, "little")[:3]
        return torch.tensor(list(rgb), dtype=torch.float32) / 255

    def new_stream(self, seed: int = 0) -> dict:
        return {"t": 0}

    def generate_chunk(self, state, embedding, *, ltc=True) -> ChunkResult:
        if not torch.isfinite(embedding).all():
            raise NonFiniteError("NaN in the conditioning (injected fault)")
        time.sleep(self.chunk_seconds)
        frames = np.empty((self.frames_per_chunk, self.height, self.width, 3), np.uint8)
        frames[:] = (embedding * 255).round().to(torch.uint8).numpy()
        for k in range(self.frames_per_chunk):
            x = (state["t"] + k) % self.width
            frames[k, :8, x:x + 4] = 255
        state["t"] += self.frames_per_chunk
        return ChunkResult(frames=frames, model_calls=3 if ltc else 4, steps=4, denoise_s=self.chunk_seconds)


# --- measurement helpers ---------------------------------------------------------------------
def resources(collect: bool = True) -> dict[str, float]:
    if collect:  # a full collection pauses the clients' loop for a while: not while they are measured
        gc.collect()
    rss_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmRSS:"))
    return {"rss_mb": round(rss_kb / 1024, 1), "fds": len(os.listdir("/proc/self/fd")),
            "threads": threading.active_count()}


def delta(before: dict, after: dict) -> dict:
    return {k: round(after[k] - before[k], 1) for k in before}


class ServerThread:
    """A StreamServer on its own event loop in a background thread."""

    def __init__(self, model: VideoModel, **cfg):
        self.loop = asyncio.new_event_loop()
        self.server = StreamServer(model, ServerConfig(port=0, **cfg))
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-load-server", daemon=True)

    def __enter__(self) -> StreamServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        return self.server

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Watcher:
    """A viewer as the browser is one: a WebSocket for messages, an aiortc peer connection for video."""

    def __init__(self, port: int, address: str = "127.0.0.1"):
        self.port, self.address = port, address
        self.frames: list[float] = []  # arrival times
        self.messages: list[dict] = []
        self.closed = asyncio.Event()
        self.ws = self.pc = None
        self._tasks: list[asyncio.Task] = []

    async def start(self, timeout: float = 15.0) -> "Watcher":
        self.ws = await connect(f"ws://127.0.0.1:{self.port}/ws", local_addr=(self.address, 0))
        self.pc = RTCPeerConnection()
        self.pc.addTransceiver("video", direction="recvonly")

        @self.pc.on("track")
        def on_track(track):
            async def pull():
                try:
                    while True:
                        await track.recv()
                        self.frames.append(time.perf_counter())
                except MediaStreamError:
                    pass
            self._tasks.append(asyncio.ensure_future(pull()))

        self._tasks.append(asyncio.ensure_future(self._read()))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.ws.send(json.dumps({"type": "offer", "sdp": self.pc.localDescription.sdp}))
        await self.wait_frames(1, timeout)
        return self

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                self.messages.append(msg)
                if msg["type"] == "answer":
                    await self.pc.setRemoteDescription(RTCSessionDescription(sdp=msg["sdp"], type="answer"))
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def wait_frames(self, n: int, timeout: float) -> bool:
        deadline = time.perf_counter() + timeout
        target = len(self.frames) + n
        while len(self.frames) < target:
            if time.perf_counter() > deadline or self.closed.is_set():
                return False
            await asyncio.sleep(0.02)
        return True

    def fps(self, since: float, until: float | None = None) -> float:
        until = until or time.perf_counter()
        return sum(since <= t < until for t in self.frames) / (until - since)

    def held_rate(self, since: float, until: float) -> bool:
        """Received at least 97% of the content frame rate over the window, give or take the two
        frames its edges can cut off."""
        return self.fps(since, until) * (until - since) >= 0.97 * TARGET_FPS * (until - since) - 2

    def codes(self) -> list[str]:
        return [m.get("code", "") for m in self.messages if m["type"] in ("error", "goodbye")]

    async def close(self, abrupt: bool = False) -> None:
        if abrupt and self.ws is not None:
            self.ws.transport.abort()  # no closing handshake: the server learns from the socket
        if self.pc is not None:
            await self.pc.close()
        if self.ws is not None and not abrupt:
            await self.ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class NonReader:
    """A WebSocket client on a plain blocking socket that completes the handshake, sends, and never
    reads again (a tiny receive buffer, so the server's writes back up at once)."""

    def __init__(self, port: int, address: str = "127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(5.0)
        self.sock.bind((address, 0))
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("the server closed the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())

    def send_text(self, text: str) -> bool:
        """One masked text frame (RFC 6455 5.2); False once the server has dropped the connection."""
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        header = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else (
            struct.pack("!BBH", 0x81, 0x80 | 126, n) if n < 65536 else struct.pack("!BBQ", 0x81, 0x80 | 127, n))
        masked = (np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
        try:
            self.sock.sendall(header + mask + masked)
            return True
        except OSError:  # reset, broken pipe or timed out: the server gave up on us
            return False

    def ping(self, size: int) -> bool:
        return self.send_text(json.dumps({"type": "ping", "t": "x" * size}))

    def close(self) -> None:
        self.sock.close()


async def bare_socket(port: int, address: str) -> tuple[Any, dict]:
    """A socket that connects and never offers: (the socket, its first message)."""
    ws = await connect(f"ws://127.0.0.1:{port}/ws", local_addr=(address, 0))
    try:
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
    except (ConnectionClosed, TimeoutError):
        first = {"type": "closed"}
    return ws, first


# --- scenarios -------------------------------------------------------------------------------
async def churn(port: int, server: StreamServer, cycles: int, abrupt_fraction: float, warm_up: int) -> dict:
    """`warm_up` cycles first, not counted in the deltas: the first visitors fill pools and caches
    (the executor's threads, codec and TLS state) that stay, and are no leak."""
    keeper = await Watcher(port, "127.0.0.2").start()
    await keeper.wait_frames(16, 10)

    async def cycle(i: int) -> tuple[bool, bool]:
        is_abrupt = int((i + 1) * abrupt_fraction) > int(i * abrupt_fraction)
        w = Watcher(port, f"127.0.0.{100 + i % 150}")  # visitors: offers are budgeted per address
        got = False
        try:
            await w.start(10)
            got = await w.wait_frames(3, 10)
        except (ConnectionClosed, OSError, TimeoutError):
            pass
        await w.close(abrupt=is_abrupt)
        return got, is_abrupt

    for i in range(warm_up):
        await cycle(cycles + i)
    before, t0 = resources(), time.perf_counter()
    with_video = abrupt = 0
    rss_every = [before["rss_mb"]]
    for i in range(cycles):
        got, is_abrupt = await cycle(i)
        with_video += got
        abrupt += is_abrupt
        if (i + 1) % max(1, cycles // 5) == 0:
            rss_every.append(resources(collect=False)["rss_mb"])
    t1 = time.perf_counter()
    settled = await _settle(lambda: len(server.viewers) == 1, 10)
    await asyncio.sleep(1.0)
    after = resources()
    fps, held = keeper.fps(t0, t1), keeper.held_rate(t0, t1)
    keeper_lost = keeper.closed.is_set()
    await keeper.close()
    return {"load": {"cycles": cycles, "abrupt": abrupt, "warm_up_cycles": warm_up, "seconds": round(t1 - t0, 1)},
            "held": {"cycles_with_video": with_video, "long_lived_viewer_fps": round(fps, 2),
                     "viewers_back_to_one": settled, "rss_mb_each_fifth_of_the_cycles": rss_every},
            "lost": {"cycles_without_video": cycles - with_video, "long_lived_viewer_closed": keeper_lost},
            "resources": delta(before, after),
            "ok": with_video == cycles and held and settled and not keeper_lost}


async def lockout(port: int, server: StreamServer, seconds: float, visitors: int) -> dict:
    """Eight bare sockets from one address (the attack of issue 39), each re-opened as soon as it
    is refused or expires, while visitors from other addresses arrive and must get video."""
    stop = asyncio.Event()
    first_codes: dict[str, int] = {}
    connections = 0
    held_max = 0

    async def attacker() -> None:
        nonlocal connections
        while not stop.is_set():
            try:
                ws, first = await bare_socket(port, "127.0.0.1")
            except (OSError, TimeoutError):
                await asyncio.sleep(0.2)
                continue
            connections += 1
            code = first.get("code", first["type"])
            first_codes[code] = first_codes.get(code, 0) + 1
            try:  # hold it, reading and never offering, until the server lets go or the run ends
                while not stop.is_set():
                    try:
                        await asyncio.wait_for(ws.recv(), 0.5)
                    except TimeoutError:
                        pass
            except ConnectionClosed:
                pass
            ws.transport.abort()
            await asyncio.sleep(0.2)  # and again

    tasks = [asyncio.create_task(attacker()) for _ in range(8)]
    await asyncio.sleep(1.0)
    t0 = time.perf_counter()
    admitted, watchers = 0, []
    for i in range(visitors):
        w = Watcher(port, f"127.0.0.{10 + i}")
        watchers.append(w)
        try:
            await w.start(10)
            admitted += await w.wait_frames(8, 10)
        except (ConnectionClosed, OSError, TimeoutError):
            pass
    while time.perf_counter() - t0 < seconds:
        held_max = max(held_max, sum(v.address == "127.0.0.1" for v in list(server.viewers)))
        await asyncio.sleep(0.1)
    t1 = time.perf_counter()
    window = t1 - min(seconds / 2, 5.0)
    fps = [w.fps(window, t1) for w in watchers]
    held = all(w.held_rate(window, t1) for w in watchers)
    visitors_lost = visitors - admitted + sum(w.closed.is_set() for w in watchers)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for w in watchers:
        await w.close()
    return {"load": {"attacking_sockets": 8, "attacker_connections": connections, "seconds": round(seconds, 1),
                     "visitors": visitors, "offer_deadline_s": server.cfg.offer_deadline},
            "held": {"visitors_with_video": admitted, "visitor_fps_min": round(min(fps), 2),
                     "attacker_sockets_admitted_at_once_max": held_max},
            "lost": {"visitors_refused_or_closed": visitors_lost},
            "attacker_first_messages": first_codes,
            "ok": visitors_lost == 0 and held_max <= server.cfg.max_per_address and held}


async def send_pings(ws, messages: int, *, yield_every: int = 1, timeout: float = 15) -> tuple[int, list[dict]]:
    """Send up to `messages` pings as fast as the socket takes them (yielding to the loop every
    `yield_every`), reading every reply until the server closes; (pings sent, replies)."""
    replies: list[dict] = []

    async def read():
        try:
            async for raw in ws:
                replies.append(json.loads(raw))
        except ConnectionClosed:
            pass
    reader = asyncio.create_task(read())
    sent = 0
    for i in range(messages):
        try:
            await ws.send(json.dumps({"type": "ping", "t": i}))
        except ConnectionClosed:
            break
        sent += 1
        if i % yield_every == 0:
            await asyncio.sleep(0)
    await asyncio.wait_for(reader, timeout)
    return sent, replies


async def flood(port: int, server: StreamServer, messages: int) -> dict:
    keeper = await Watcher(port, "127.0.0.2").start()
    await keeper.wait_frames(16, 10)
    before, t0 = resources(), time.perf_counter()
    ws = await connect(f"ws://127.0.0.1:{port}/ws", local_addr=("127.0.0.3", 0))
    sent, replies = await send_pings(ws, messages, yield_every=20, timeout=15)
    t1 = time.perf_counter()
    await keeper.wait_frames(16, 5)
    t2 = time.perf_counter()
    fps, held = keeper.fps(t0, t2), keeper.held_rate(t0, t2)
    codes = [m["code"] for m in replies if m["type"] == "error"]
    keeper_lost = keeper.closed.is_set()
    await keeper.close()
    after = resources()
    return {"load": {"messages_attempted": messages, "messages_sent_before_close": sent},
            "held": {"flooder_closed_with": codes[-1] if codes else None, "close_code": ws.close_code,
                     "pongs_answered": sum(m["type"] == "pong" for m in replies),
                     "rate_limited_replies": codes.count("rate_limited"),
                     "viewer_fps_during": round(fps, 2), "seconds": round(t1 - t0, 2)},
            "lost": {"viewer_closed": keeper_lost},
            "resources": delta(before, after),
            "ok": bool(codes) and codes[-1] == "too_many_errors" and held and not keeper_lost}


async def fuzz(port: int, server: StreamServer, examples: int, seed: int) -> dict:
    """Hypothesis, seeded, no shrinking: every message must get one reply of an expected type (an
    error always with a string code and message); the viewer watching must not notice."""
    keeper = await Watcher(port, "127.0.0.2").start()
    await keeper.wait_frames(8, 10)
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    base_sdp = pc.localDescription.sdp
    await pc.close()
    t0 = time.perf_counter()
    report = await asyncio.to_thread(_fuzz_sync, port, base_sdp, examples, seed)
    fps = keeper.fps(t0)
    alive = not keeper.closed.is_set() and await keeper.wait_frames(8, 5)
    await keeper.close()
    report["held"].update({"viewer_fps_during": round(fps, 2), "viewer_streaming_after": alive})
    report["ok"] = report["lost"]["unexpected_replies"] == 0 and report["lost"]["no_reply"] == 0 and alive
    return report


REPLIES = {"offer": {"answer", "error"}, "prompt": {"prompt_ack", "error"}, "auth": {"auth_ok", "error"},
           "set": {"settings", "error"}, "ping": {"pong", "error"}}


def _fuzz_sync(port: int, base_sdp: str, examples: int, seed: int) -> dict:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st
    from websockets.sync.client import connect as sync_connect

    json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
                              lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                              max_leaves=12)
    schema = st.fixed_dictionaries(
        {"type": st.sampled_from([*REPLIES, "teleport", ""]) | st.text(max_size=12)},
        optional={"text": json_value | st.text(max_size=400), "sdp": json_value, "token": json_value,
                  "ltc": json_value, "t": json_value}).map(json.dumps)
    lines = base_sdp.split("\r\n")

    def mutate(ops) -> str:
        out = list(lines)
        for op, i, junk in ops:
            i %= len(out)
            if op == "drop":
                del out[i]
            elif op == "dup":
                out.insert(i, out[i])
            elif op == "junk":
                out[i] = junk
            elif op == "cut":
                out[i] = out[i][: len(junk)]
            if not out:
                out = ["v=0"]
        return "\r\n".join(out)

    sdp = st.lists(st.tuples(st.sampled_from(["drop", "dup", "junk", "cut"]), st.integers(0, 500), st.text(max_size=30)),
                   min_size=1, max_size=4).map(lambda ops: json.dumps({"type": "offer", "sdp": mutate(ops)}))
    garbage = st.text(max_size=200) | st.binary(max_size=200)
    message = st.one_of(schema, sdp, garbage)

    tally = {"examples": 0, "codes": {}, "replies": {}, "unexpected": [], "no_reply": 0, "reconnects": 0}
    connections = contextlib.ExitStack()
    conn = [connections.enter_context(sync_connect(f"ws://127.0.0.1:{port}/ws"))]
    _next_direct(conn[0])  # hello

    @hypothesis_seed(seed)
    @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(message)
    def probe(raw):
        tally["examples"] += 1
        try:
            conn[0].send(raw)
            reply = _next_direct(conn[0])
        except (ConnectionClosed, TimeoutError, OSError):
            tally["no_reply"] += 1
            reply = None
        if reply is None:
            conn[0] = connections.enter_context(sync_connect(f"ws://127.0.0.1:{port}/ws"))
            _next_direct(conn[0])
            tally["reconnects"] += 1
            return
        tally["replies"][reply["type"]] = tally["replies"].get(reply["type"], 0) + 1
        try:
            sent_type = json.loads(raw).get("type") if isinstance(raw, str) else None
        except (ValueError, AttributeError, RecursionError):
            sent_type = None
        expected = REPLIES.get(sent_type, {"error"}) if isinstance(sent_type, str) else {"error"}
        good = reply["type"] in expected and (reply["type"] != "error" or (
            isinstance(reply.get("code"), str) and isinstance(reply.get("message"), str) and reply["message"]))
        if reply["type"] == "error":
            tally["codes"][reply["code"]] = tally["codes"].get(reply["code"], 0) + 1
        if not good:
            tally["unexpected"].append({"sent": str(raw)[:120], "reply": reply})

    with connections:
        probe()
    return {"load": {"examples": tally["examples"], "seed": seed,
                     "kinds": "schema-shaped JSON, mutated SDP offers, raw text and bytes"},
            "held": {"replies": tally["replies"], "error_codes": tally["codes"]},
            "lost": {"unexpected_replies": len(tally["unexpected"]), "no_reply": tally["no_reply"],
                     "examples_unexpected": tally["unexpected"][:3]}}


def _next_direct(conn) -> dict:
    """The next reply to a message (stats and broadcasts skipped)."""
    while True:
        msg = json.loads(conn.recv(timeout=10))
        if msg["type"] not in ("stats", "prompt_changed"):
            return msg


async def slow_reader(port: int, server: StreamServer, ping_bytes: int) -> dict:
    keeper = await Watcher(port, "127.0.0.2").start()
    await keeper.wait_frames(16, 10)
    before, t0 = resources(), time.perf_counter()
    slow = await asyncio.to_thread(NonReader, port, "127.0.0.3")
    await _settle(lambda: any(v.address == "127.0.0.3" for v in list(server.viewers)), 5)
    (viewer,) = [v for v in list(server.viewers) if v.address == "127.0.0.3"]
    sent, depth = 0, 0
    while viewer in server.viewers and time.perf_counter() - t0 < 30:
        if not await asyncio.to_thread(slow.ping, ping_bytes):
            break
        sent += 1
        depth = max(depth, viewer.outbox.qsize())
    closed = await _settle(lambda: viewer not in server.viewers, 10)
    t1 = time.perf_counter()
    slow.close()
    await keeper.wait_frames(16, 5)
    t2 = time.perf_counter()
    fps, held = keeper.fps(t0, t2), keeper.held_rate(t0, t2)
    keeper_lost = keeper.closed.is_set()
    await keeper.close()
    after = resources()
    dropped = server.metrics.messages_dropped._value.get()
    return {"load": {"pings_sent": sent, "echo_bytes_each": ping_bytes,
                     "bytes_asked_back": sent * ping_bytes},
            "held": {"outbox_max": depth, "outbox_limit": server.cfg.outbox_messages,
                     "closed_after_s": round(t1 - t0, 2), "viewer_fps_during": round(fps, 2)},
            "lost": {"messages_dropped": int(dropped), "viewer_closed": keeper_lost},
            "resources": delta(before, after),
            "ok": closed and depth <= server.cfg.outbox_messages and held and not keeper_lost}


async def model_fault(port: int, server: StreamServer) -> dict:
    a = await Watcher(port, "127.0.0.2").start()
    b = await Watcher(port, "127.0.0.3").start()
    await b.wait_frames(16, 10)
    t0 = time.perf_counter()
    await a.ws.send(json.dumps({"type": "prompt", "text": FAULT_PROMPT}))
    await asyncio.wait_for(a.closed.wait(), 10)
    told = time.perf_counter() - t0
    await b.ws.send(json.dumps({"type": "prompt", "text": "after the fault"}))
    await b.wait_frames(32, 5)
    t1 = time.perf_counter()
    fps, held = b.fps(t0, t1), b.held_rate(t0, t1)
    b_acked = any(m["type"] == "prompt_ack" for m in b.messages)
    b_lost = b.closed.is_set()
    await a.close()
    await b.close()
    return {"load": {"streams": 2, "fault": "NaN on every chunk of one per-viewer stream",
                     "max_faults": server.cfg.max_faults},
            "held": {"other_viewer_fps": round(fps, 2), "other_viewer_prompt_acked": b_acked,
                     "faulty_viewer_told": a.codes(), "faulty_viewer_closed_after_s": round(told, 2)},
            "lost": {"other_viewer_closed": b_lost},
            "ok": "stream_failed" in a.codes() and held and b_acked and not b_lost}


async def capacity(port: int, server: StreamServer, viewers: int, seconds: float) -> dict:
    watchers = [await Watcher(port, f"127.0.0.{20 + i}").start() for i in range(viewers)]
    for w in watchers:
        await w.wait_frames(8, 10)
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    t1 = time.perf_counter()
    fps = [w.fps(t0, t1) for w in watchers]
    below = sum(not w.held_rate(t0, t1) for w in watchers)
    for w in watchers:
        await w.close()
    return {"load": {"viewers": viewers, "mode": server.cfg.mode, "seconds": seconds,
                     "frame": f"{server.model.width}x{server.model.height}"},
            "held": {"fps_min": round(min(fps), 2), "fps_mean": round(sum(fps) / len(fps), 2)},
            "lost": {"viewers_below_16fps": below},
            "ok": below == 0}


async def soak(port: int, server: StreamServer, seconds: float, viewers: int) -> dict:
    watchers = [await Watcher(port, f"127.0.0.{30 + i}").start() for i in range(viewers)]
    samples = [resources()]
    t0 = time.perf_counter()
    prompts = cycles = 0
    window_fps: list[float] = []
    windows_held: list[bool] = []
    last_window = t0
    while time.perf_counter() - t0 < seconds:
        await asyncio.sleep(1.0)
        await watchers[prompts % viewers].ws.send(json.dumps({"type": "prompt", "text": f"soak prompt {prompts % 7}"}))
        prompts += 1
        if prompts % 5 == 0:  # one visitor comes and goes
            w = Watcher(port, "127.0.0.50")
            try:
                await w.start(10)
                await w.wait_frames(3, 10)
            except (ConnectionClosed, OSError, TimeoutError):
                pass
            await w.close(abrupt=cycles % 2 == 1)
            cycles += 1
        samples.append(resources(collect=False))
        if time.perf_counter() - last_window >= 10 or time.perf_counter() - t0 >= seconds:
            now = time.perf_counter()
            window_fps.append(min(w.fps(last_window, now) for w in watchers))
            windows_held.append(all(w.held_rate(last_window, now) for w in watchers))
            last_window = now
    lost = sum(w.closed.is_set() for w in watchers)
    for w in watchers:
        await w.close()
    half = samples[len(samples) // 2:]
    minutes = max(1e-9, (len(half) - 1) / 60)
    return {"load": {"seconds": round(time.perf_counter() - t0, 1), "viewers": viewers, "prompts": prompts,
                     "churn_cycles": cycles},
            "held": {"viewer_fps_min_per_window": round(min(window_fps), 2),
                     "rss_mb": {"start": samples[0]["rss_mb"], "end": samples[-1]["rss_mb"],
                                "max": max(s["rss_mb"] for s in samples),
                                "second_half_slope_mb_per_min": round((half[-1]["rss_mb"] - half[0]["rss_mb"]) / minutes, 2)},
                     "fds": {"start": samples[0]["fds"], "end": samples[-1]["fds"], "max": max(s["fds"] for s in samples)},
                     "threads": {"start": samples[0]["threads"], "end": samples[-1]["threads"]}},
            "lost": {"viewers_closed": lost},
            "resources": delta(samples[0], samples[-1]),
            "ok": lost == 0 and all(windows_held)}


async def _settle(predicate, timeout: float) -> bool:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# --- the suite -------------------------------------------------------------------------------
SIZES = {  # full run, short run (the tests)
    "churn": ({"cycles": 100, "abrupt_fraction": 0.5, "warm_up": 10}, {"cycles": 6, "abrupt_fraction": 0.5, "warm_up": 2}),
    "lockout": ({"seconds": 20.0, "visitors": 4}, {"seconds": 4.0, "visitors": 2}),
    "flood": ({"messages": 3000}, {"messages": 400}),
    "fuzz": ({"examples": 300, "seed": 39}, {"examples": 40, "seed": 39}),
    "slow_reader": ({"ping_bytes": 30000}, {"ping_bytes": 30000}),
    "model_fault": ({}, {}),
    "capacity": ({"viewers": 8, "seconds": 10.0}, {"viewers": 3, "seconds": 3.0}),
    "soak": ({"seconds": 120.0, "viewers": 4}, {"seconds": 6.0, "viewers": 2}),
}


def server_settings(name: str, short: bool, mode: str = "shared") -> dict:
    """Each scenario's server: the defaults, except where the scenario needs room on one machine."""
    cfg: dict[str, Any] = {"mode": mode, "max_viewers": 12, "max_per_address": 2}
    if name == "lockout":
        cfg.update(max_viewers=8, offer_deadline=2.0 if short else 3.0)
    elif name == "model_fault":
        cfg.update(mode="per-viewer")
    elif name == "flood":
        cfg.update(error_burst=20)
    elif name == "fuzz":  # room to reach every parser: the abuse limits have their own scenario
        cfg.update(message_rate=1000.0, error_burst=100000, offer_rate=1000.0, prompt_rate=1000.0, prompt_burst=1000)
    elif name == "slow_reader":
        cfg.update(message_rate=1000.0, send_timeout=2.0 if short else 3.0)
    return cfg


def run_suite(scenarios: tuple[str, ...] = SCENARIOS, short: bool = False, chunk_seconds: float = 0.05) -> dict:
    results: dict[str, Any] = {}
    for name in scenarios:
        size = SIZES[name][1 if short else 0]
        modes = ("shared", "per-viewer") if name == "capacity" else ("shared",)
        for mode in modes:
            key = f"{name}_{mode.replace('-', '_')}" if name == "capacity" else name
            started = time.perf_counter()
            with ServerThread(SyntheticModel(chunk_seconds), **server_settings(name, short, mode)) as server:
                scenario = globals()[name]
                try:
                    results[key] = asyncio.run(asyncio.wait_for(scenario(server.port, server, **size), 600))
                except Exception as exc:  # one scenario's failure is a result, not the end of the suite
                    results[key] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            results[key]["seconds"] = round(time.perf_counter() - started, 1)
            print(f"bench load: {key}: {'ok' if results[key]['ok'] else 'NOT OK'} "
                  f"({results[key]['seconds']} s)", file=sys.stderr, flush=True)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, from: {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--short", action="store_true", help="the tests' short sizes (about a minute in all)")
    parser.add_argument("--chunk-ms", type=float, default=50.0,
                        help="the synthetic model's cost per 4-frame chunk (sleep, so the CPU stays with the server)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")


def main(args: argparse.Namespace) -> int:
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise ConfigError(f"--scenarios: unknown {', '.join(unknown)} (choose from {', '.join(SCENARIOS)})")
    if not 0 <= args.chunk_ms <= 240:
        raise ConfigError(f"--chunk-ms must be between 0 and 240 (a chunk is 250 ms of video), got {args.chunk_ms}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ltc_stream").setLevel(logging.CRITICAL)  # the scenarios provoke faults on purpose
    t0 = time.perf_counter()
    results = run_suite(scenarios, short=args.short, chunk_seconds=args.chunk_ms / 1000)
    report = {"command": getattr(args, "command_line", "ltc-stream bench load"),
              "model": f"{SyntheticModel.name} ({SyntheticModel.width}x{SyntheticModel.height}, "
                       f"{args.chunk_ms:g} ms per {SyntheticModel.frames_per_chunk}-frame chunk)",
              "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__},
              "all_ok": all(r["ok"] for r in results.values()), "seconds": round(time.perf_counter() - t0, 1),
              "scenarios": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if report["all_ok"] else 1
