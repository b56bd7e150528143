"""`ltc-stream bench e2e`: start a server in this process, connect a real WebRTC client (aiortc) on
loopback, and report what a viewer gets: received FPS, frame-interval jitter, time to first frame,
and prompt-to-screen latency. Prints one JSON object."""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from websockets.asyncio.client import connect

from ltc_stream.cli import add_model_arguments, load_model_from_args
from ltc_stream.errors import ConfigError

from .app import ServerConfig, StreamServer

PROMPTS = ["a yellow star spinning on a purple background", "a red ball moving left on a blue background",
           "a white square moving up on a green background"]


async def _measure(server: StreamServer, seconds: float, prompt_every: float) -> dict:
    t_connect = time.perf_counter()
    ws = await connect(f"ws://127.0.0.1:{server.port}/ws")
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    arrivals: list[float] = []
    first_frame = asyncio.Event()

    @pc.on("track")
    def on_track(track):
        async def pull():
            try:
                while True:
                    await track.recv()
                    arrivals.append(time.perf_counter())
                    first_frame.set()
            except MediaStreamError:  # the peer connection closed: the run is over
                pass
        asyncio.ensure_future(pull())

    await pc.setLocalDescription(await pc.createOffer())
    await ws.send(json.dumps({"type": "offer", "sdp": pc.localDescription.sdp}))
    latencies: list[float] = []
    calls: list[float] = []
    speedups: list[float] = []
    pending_prompt: int | None = None

    async def reader():
        nonlocal pending_prompt
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "answer":
                await pc.setRemoteDescription(RTCSessionDescription(sdp=msg["sdp"], type="answer"))
            elif msg["type"] == "prompt_ack":
                pending_prompt = msg["chunk"]
            elif msg["type"] == "stats":
                calls.append(msg["model_calls_per_chunk"])
                speedups.append(msg["ltc_speedup"])
                if pending_prompt is not None and msg["chunk"] >= pending_prompt and msg["latency_ms"] is not None:
                    latencies.append(msg["latency_ms"])
                    pending_prompt = None

    reader_task = asyncio.create_task(reader())
    await asyncio.wait_for(first_frame.wait(), 30)
    ttff = arrivals[0] - t_connect
    start = time.perf_counter()
    next_prompt = start + prompt_every
    k = 0
    while time.perf_counter() - start < seconds:
        await asyncio.sleep(0.1)
        if time.perf_counter() >= next_prompt and pending_prompt is None:
            await ws.send(json.dumps({"type": "prompt", "text": PROMPTS[k % len(PROMPTS)]}))
            k += 1
            next_prompt = time.perf_counter() + prompt_every
    window = [t for t in arrivals if t >= start]
    intervals = [b - a for a, b in zip(window, window[1:])]
    reader_task.cancel()
    await pc.close()
    await ws.close()
    return {
        "received_fps": round((len(window) - 1) / (window[-1] - window[0]), 2) if len(window) > 1 else 0.0,
        "frames_received": len(window),
        "jitter_ms": round(statistics.pstdev(intervals) * 1000, 2) if intervals else None,
        "interval_p95_ms": round(sorted(intervals)[int(0.95 * (len(intervals) - 1))] * 1000, 2) if intervals else None,
        "ttff_s": round(ttff, 3),
        "prompt_to_screen_ms": round(statistics.median(latencies), 1) if latencies else None,
        "prompt_to_screen_samples": len(latencies),
        "model_calls_per_chunk": round(statistics.mean(calls), 2) if calls else None,
        "ltc_speedup": round(statistics.mean(speedups), 3) if speedups else None,
    }


async def run_bench(model, cfg: ServerConfig, seconds: float, prompt_every: float) -> dict:
    server = StreamServer(model, cfg)
    await server.start()
    try:
        result = await _measure(server, seconds, prompt_every)
        result["generation_fps"] = round(server.shared.generator.stats.fps, 2) if server.shared else None
    finally:
        await server.stop()
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    run = parser.add_argument_group("measurement")
    run.add_argument("--seconds", type=float, default=30.0, metavar="S", help="measured after the first frame (default 30)")
    run.add_argument("--prompt-every", type=float, default=5.0, metavar="S", help="send a new prompt this often (default 5)")
    run.add_argument("--json", action="store_true", help="print JSON only")
    run.add_argument("--output", metavar="FILE", help="also write the JSON (with its command) here")


def main(args: argparse.Namespace) -> int:
    if not 1 <= args.seconds <= 3600:
        raise ConfigError(f"--seconds must be between 1 and 3600, got {args.seconds}")
    model = load_model_from_args(args)
    cfg = ServerConfig(port=0, ltc=not args.no_ltc)
    if not args.json:
        print(f"bench e2e: {args.seconds:g} s with {model.name} ({model.width}x{model.height}), LTC {'off' if args.no_ltc else 'on'}",
              file=sys.stderr)
    result = asyncio.run(run_bench(model, cfg, args.seconds, args.prompt_every))
    result = {"model": model.name, "resolution": [model.width, model.height], "content_fps": model.fps,
              "ltc": not args.no_ltc, "seconds": args.seconds, **result,
              "command": getattr(args, "command_line", None)}
    print(json.dumps(result))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    return 0
