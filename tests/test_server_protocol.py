"""The server's contract, exercised by a real aiortc client and a real WebSocket client on loopback.
Every loop is bounded in count and time."""
from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from websockets.asyncio.client import connect

from ltc_stream.server.app import ServerConfig, StreamServer

from conftest import COLOUR_WORDS, ColourModel


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def started(model, **cfg) -> StreamServer:
    server = StreamServer(model, ServerConfig(port=0, **cfg))
    await server.start()
    return server


async def recv_type(ws, wanted: str, timeout: float = 10.0) -> dict:
    """Next message of type `wanted` (stats and hellos in between are skipped)."""
    async def loop():
        while True:
            msg = json.loads(await ws.recv())
            if msg["type"] == wanted:
                return msg
    return await asyncio.wait_for(loop(), timeout)


async def open_viewer(server):
    ws = await connect(f"ws://127.0.0.1:{server.port}/ws")
    hello = await recv_type(ws, "hello")
    return ws, hello


async def start_video(ws):
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    frames: list = []
    got_track = asyncio.Event()

    @pc.on("track")
    def on_track(track):
        async def pull():
            try:
                while len(frames) < 400:
                    frames.append(await track.recv())
            except MediaStreamError:  # closed at the end of the test
                pass
        asyncio.ensure_future(pull())
        got_track.set()

    await pc.setLocalDescription(await pc.createOffer())
    await ws.send(json.dumps({"type": "offer", "sdp": pc.localDescription.sdp}))
    answer = await recv_type(ws, "answer")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    return pc, frames


async def wait_for(predicate, timeout=15.0, interval=0.05):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


def mean_colour(frame) -> np.ndarray:
    img = frame.to_ndarray(format="rgb24")
    return img[16:, :, :].reshape(-1, 3).mean(0)  # below the moving bar


def test_http_endpoints(colour_model):
    async def body():
        server = await started(colour_model)
        try:
            base = f"http://127.0.0.1:{server.port}"
            fetch = lambda path: urllib.request.urlopen(base + path, timeout=5)  # noqa: E731
            page = await asyncio.to_thread(lambda: fetch("/").read().decode())
            assert "<video" in page and "/app.js" in page
            js = await asyncio.to_thread(lambda: fetch("/app.js").read().decode())
            assert "RTCPeerConnection" in js
            assert await asyncio.to_thread(lambda: fetch("/healthz").read()) == b"ok\n"
            health = json.loads(await asyncio.to_thread(lambda: fetch("/health").read()))
            assert health["status"] == "ok" and health["model"]["name"] == "colour-test-model"
            assert health["viewers"] == 0 and health["ltc"] is True
            await wait_for(lambda: server.shared.generator.stats.chunks > 2, 5)
            metrics = await asyncio.to_thread(lambda: fetch("/metrics").read().decode())
            for name in ("ltc_chunks_generated_total", "ltc_generation_fps", "ltc_model_calls_per_chunk",
                         "ltc_steps_skipped_total", "ltc_queue_depth", "ltc_viewers", "ltc_frames_dropped_total",
                         "ltc_prompt_to_screen_seconds_bucket"):
                assert name in metrics
            with pytest.raises(urllib.error.HTTPError) as err:
                await asyncio.to_thread(lambda: fetch("/secret"))
            assert err.value.code == 404
        finally:
            await server.stop()
    run(body())


def test_video_plays_paced_and_a_prompt_changes_the_picture(colour_model):
    async def body():
        server = await started(colour_model, prompt="a red square")
        try:
            ws, hello = await open_viewer(server)
            assert hello["prompt"] == "a red square"
            pc, frames = await start_video(ws)
            assert await wait_for(lambda: len(frames) >= 24, 20), f"only {len(frames)} frames"
            red = np.array(COLOUR_WORDS["red"])
            assert np.abs(mean_colour(frames[-1]) - red).max() < 25
            # pts advance by one frame period (90 kHz clock / 16 fps) with no bursts or gaps
            pts = np.diff([f.pts for f in frames[-16:]])
            assert np.all(np.abs(pts - 90000 / 16) <= 90000 / 16 * 0.1), pts
            await ws.send(json.dumps({"type": "prompt", "text": "now a blue square"}))
            ack = await recv_type(ws, "prompt_ack")
            assert ack["text"] == "now a blue square" and isinstance(ack["chunk"], int)
            blue = np.array(COLOUR_WORDS["blue"])
            n = len(frames)
            assert await wait_for(lambda: len(frames) > n and np.abs(mean_colour(frames[-1]) - blue).max() < 25, 15)
            stats = await recv_type(ws, "stats", 5)
            assert stats["ltc_speedup"] == pytest.approx(4 / 3, abs=0.01)
            assert stats["model_calls_per_chunk"] == pytest.approx(3.0)
            await pc.close()
            await ws.close()
        finally:
            await server.stop()
    run(body())


BAD_MESSAGES = [
    ("{not json", "bad_json"),
    ("[1, 2, 3]", "bad_message"),
    (json.dumps({"type": "teleport"}), "unknown_type"),
    (json.dumps({"type": "prompt"}), "bad_message"),
    (json.dumps({"type": "prompt", "text": "   "}), "prompt_empty"),
    (json.dumps({"type": "prompt", "text": "x" * 301}), "prompt_too_long"),
    (json.dumps({"type": "offer", "sdp": "hello"}), "bad_sdp"),
    (json.dumps({"type": "offer", "sdp": "v=0\r\nthis is not sdp\r\n"}), "bad_sdp"),
    (json.dumps({"type": "set", "ltc": False}), "forbidden"),
    (json.dumps({"type": "auth", "token": "guess"}), "forbidden"),
    (json.dumps({"type": "prompt", "text": "y" * 70000}), "message_too_large"),
]


def test_every_bad_input_gets_a_clear_error_and_the_connection_stays_usable(colour_model):
    async def body():
        server = await started(colour_model, operator_token="s3cret")
        try:
            ws, _ = await open_viewer(server)
            for raw, code in BAD_MESSAGES:
                await ws.send(raw)
                err = await recv_type(ws, "error")
                assert err["code"] == code, (raw[:40], err)
                assert err["message"]
                await ws.send(json.dumps({"type": "ping", "t": 1}))
                assert (await recv_type(ws, "pong"))["t"] == 1
            await ws.send(b"\x00\x01")
            assert (await recv_type(ws, "error"))["code"] == "bad_message"
            # operator: auth then a server-wide change
            await ws.send(json.dumps({"type": "auth", "token": "s3cret"}))
            await recv_type(ws, "auth_ok")
            await ws.send(json.dumps({"type": "set", "ltc": False}))
            assert (await recv_type(ws, "settings"))["ltc"] is False
            assert server.shared.generator.ltc is False
            await ws.close()
        finally:
            await server.stop()
    run(body())


def test_prompt_rate_limit(colour_model):
    async def body():
        server = await started(colour_model, prompt_rate=1.0, prompt_burst=2)
        try:
            ws, _ = await open_viewer(server)
            codes = []
            for i in range(5):
                await ws.send(json.dumps({"type": "prompt", "text": f"red {i}"}))
                msg = await asyncio.wait_for(_next_reply(ws), 10)
                codes.append(msg.get("code", msg["type"]))
            assert codes[:2] == ["prompt_ack", "prompt_ack"]
            assert "rate_limited" in codes[2:]
            await ws.close()
        finally:
            await server.stop()
    run(body())


async def _next_reply(ws):
    while True:
        msg = json.loads(await ws.recv())
        if msg["type"] in ("prompt_ack", "error"):
            return msg


def test_server_full_leaves_existing_viewers_untouched(colour_model):
    async def body():
        server = await started(colour_model, max_viewers=1)
        try:
            ws1, _ = await open_viewer(server)
            pc, frames = await start_video(ws1)
            assert await wait_for(lambda: len(frames) >= 5, 15)
            ws2 = await connect(f"ws://127.0.0.1:{server.port}/ws")
            err = await recv_type(ws2, "error")
            assert err["code"] == "server_full"
            n = len(frames)
            assert await wait_for(lambda: len(frames) >= n + 10, 10)
            await ws1.send(json.dumps({"type": "ping"}))
            await recv_type(ws1, "pong")
            await pc.close()
            await ws1.close()
        finally:
            await server.stop()
    run(body())


def test_per_viewer_prompts_are_isolated():
    async def body():
        server = await started(ColourModel(), mode="per-viewer", prompt="a green field")
        try:
            ws1, _ = await open_viewer(server)
            ws2, _ = await open_viewer(server)
            pc1, frames1 = await start_video(ws1)
            pc2, frames2 = await start_video(ws2)
            await ws1.send(json.dumps({"type": "prompt", "text": "all red"}))
            await recv_type(ws1, "prompt_ack")
            stats2 = await recv_type(ws2, "stats")
            assert stats2["prompt"] == "a green field"
            streams = {v.stream for v in server.viewers}
            assert len(streams) == 2
            assert sorted(s.generator.prompt for s in streams) == ["a green field", "all red"]
            red, green = np.array(COLOUR_WORDS["red"]), np.array(COLOUR_WORDS["green"])
            assert await wait_for(lambda: frames1 and np.abs(mean_colour(frames1[-1]) - red).max() < 25, 15)
            assert await wait_for(lambda: frames2 and np.abs(mean_colour(frames2[-1]) - green).max() < 25, 15)
            for pc in (pc1, pc2):
                await pc.close()
            await ws1.close()
            await ws2.close()
        finally:
            await server.stop()
    run(body())


def test_shared_mode_operator_only_steering():
    async def body():
        server = await started(ColourModel(), steer="operator", operator_token="tok")
        try:
            ws, _ = await open_viewer(server)
            await ws.send(json.dumps({"type": "prompt", "text": "blue"}))
            assert (await recv_type(ws, "error"))["code"] == "forbidden"
            await ws.send(json.dumps({"type": "auth", "token": "tok"}))
            await recv_type(ws, "auth_ok")
            await ws.send(json.dumps({"type": "prompt", "text": "blue"}))
            assert (await recv_type(ws, "prompt_ack"))["text"] == "blue"
            await ws.close()
        finally:
            await server.stop()
    run(body())


def test_bad_settings_are_refused():
    from ltc_stream.errors import ConfigError

    with pytest.raises(ConfigError, match="max-viewers"):
        StreamServer(ColourModel(), ServerConfig(max_viewers=0))
    with pytest.raises(ConfigError, match="operator-token"):
        StreamServer(ColourModel(), ServerConfig(steer="operator"))
