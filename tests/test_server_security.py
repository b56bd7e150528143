"""Attacks and faults against the server, on loopback: the lockout of viewer slots, foreign pages,
tokens, floods, a viewer that stops reading, a model that fails mid-stream, SIGTERM, and the
connection settings (ICE servers, bitrate). Each test bounds its loops in count and time.

Clients bind to other loopback addresses (127.0.0.2, ...) to stand for other visitors."""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ltc_stream.errors import ConfigError, NonFiniteError
from ltc_stream.server import app as server_app
from ltc_stream.server.app import ServerConfig, StreamServer, parse_ice_server

from ltc_stream.server.bench_load import NonReader, send_pings

from conftest import COLOUR_WORDS, ColourModel
from test_server_protocol import mean_colour, open_viewer, recv_type, run, start_video, started, wait_for


async def visitor(server, address="127.0.0.1", **kwargs):
    return await connect(f"ws://127.0.0.1:{server.port}/ws", local_addr=(address, 0), **kwargs)


async def first_message(ws, timeout=5.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def closed(ws, timeout=5.0) -> bool:
    """True once the server has closed `ws` (messages before the close are skipped)."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed:
        return True
    except TimeoutError:
        return False


# --- lockout -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["shared", "per-viewer"])
def test_bare_sockets_cannot_lock_out_viewers(mode):
    """The attack of issue 39: sockets that connect and never offer. They get at most the per-address
    cap and the negotiating allowance, only until the offer deadline, and start no generator."""
    async def body():
        server = await started(ColourModel(), mode=mode, max_viewers=8, offer_deadline=2.0)
        try:
            # one attacking address opens eight sockets: two are admitted, six refused with a code
            attack = [await visitor(server, "127.0.0.1") for _ in range(8)]
            first = [await first_message(ws) for ws in attack]
            assert [m["type"] for m in first].count("hello") == 2
            refused = [m for m in first if m["type"] == "error"]
            assert {m["code"] for m in refused} == {"address_limit"} and all(m["message"] for m in refused)
            # more addresses: the negotiating allowance (half the slots) is the most they hold together
            for address in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):
                for _ in range(2):
                    ws = await visitor(server, address)
                    attack.append(ws)
                    first.append(await first_message(ws))
            assert [m["type"] for m in first].count("hello") == 4
            assert "busy" in {m.get("code") for m in first}
            assert len(server.viewers) == 4  # of 8 slots
            if mode == "per-viewer":
                assert not any(s.started for s in server._streams())  # no video, no generator
            # the deadline frees them, with a message saying why
            admitted = [ws for ws, m in zip(attack, first) if m["type"] == "hello"]
            for ws in admitted:
                err = await recv_type(ws, "error", 6)
                assert err["code"] == "offer_timeout"
                assert await closed(ws)
            assert await wait_for(lambda: not server.viewers, 3)
            # a real visitor gets in and watches; bare sockets now cannot touch it
            ws, _ = await open_viewer(server)
            pc, frames = await start_video(ws)
            assert await wait_for(lambda: len(frames) >= 5, 15)
            assert server.watching == 1
            more = [await visitor(server, a) for a in ("127.0.0.6", "127.0.0.7", "127.0.0.8")]
            n = len(frames)
            for bare in more:
                await first_message(bare)
            assert await wait_for(lambda: len(frames) >= n + 16, 10)
            await asyncio.sleep(2.5)  # past the bare sockets' deadline: the viewer is still in
            assert server.watching == 1 and len(server.viewers) == 1
            await ws.send(json.dumps({"type": "ping", "t": 7}))
            assert (await recv_type(ws, "pong"))["t"] == 7
            if mode == "per-viewer":
                assert sum(s.started for s in server._streams()) == 1
            await pc.close()
            await ws.close()
            for s in attack + more:
                await s.close()
        finally:
            await server.stop()
    run(body(), 90)


def test_per_viewer_generator_stops_when_its_viewer_leaves():
    async def body():
        server = await started(ColourModel(), mode="per-viewer")
        try:
            ws, _ = await open_viewer(server)
            pc, frames = await start_video(ws)
            assert await wait_for(lambda: len(frames) >= 5, 15)
            (stream,) = server._streams()
            thread = stream.generator._thread
            assert thread is not None and thread.is_alive()
            await pc.close()
            await ws.close()
            assert await wait_for(lambda: not thread.is_alive(), 10)
            assert not server._streams()
        finally:
            await server.stop()
    run(body())


# --- origin ------------------------------------------------------------------------------------
def test_a_foreign_page_cannot_connect_or_steer():
    async def body():
        server = await started(ColourModel(), prompt="a green field", allowed_origins=("https://booth.example.org",))
        try:
            for origin in ("https://evil.example", "null", f"http://evil.example:{server.port}",
                           "http://127.0.0.1.evil.example"):
                ws = await visitor(server, origin=origin)
                msg = await first_message(ws)  # no hello: nothing about the booth leaks
                assert msg["type"] == "error" and msg["code"] == "origin_not_allowed", origin
                try:
                    await ws.send(json.dumps({"type": "prompt", "text": "red"}))
                except ConnectionClosed:  # already closed by the server: the prompt never counts
                    pass
                assert await closed(ws)
                assert ws.close_code == 1008
            assert server.shared.generator.prompt == "a green field"
            assert server.metrics.errors.labels("forbidden")._value.get() == 0
            for origin in (f"http://127.0.0.1:{server.port}", f"http://localhost:{server.port}",
                           "https://booth.example.org", "https://BOOTH.example.org:443"):
                ws = await visitor(server, origin=origin)
                assert (await first_message(ws))["type"] == "hello", origin
                await ws.close()
            ws = await visitor(server)  # no Origin: not a browser, so no page can be behind it
            assert (await first_message(ws))["type"] == "hello"
            await ws.close()
        finally:
            await server.stop()
    run(body())


def test_origin_rules_for_a_server_on_the_lan():
    server = StreamServer(ColourModel(), ServerConfig(host="0.0.0.0", port=0))
    server.port = 8080
    assert server.origin_allowed("http://192.168.1.20:8080", "192.168.1.20:8080")  # the page it served
    assert server.origin_allowed("http://[fe80::1]:8080", "[fe80::1]:8080")
    assert not server.origin_allowed("http://192.168.1.20:8080", "192.168.1.21:8080")
    assert not server.origin_allowed("http://192.168.1.20:9999", "192.168.1.20:9999")
    # a name could be rebound by its owner's DNS to this address: names must be listed
    assert not server.origin_allowed("http://attacker.example:8080", "attacker.example:8080")
    with pytest.raises(ConfigError, match="allowed-origin"):
        StreamServer(ColourModel(), ServerConfig(allowed_origins=("booth.example.org",)))


# --- tokens ------------------------------------------------------------------------------------
def test_operator_token_is_compared_in_constant_time_and_never_logged(caplog, monkeypatch):
    secret = "tok-S3CRET-7f2a"
    compared = []
    real = server_app.hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(server_app.hmac, "compare_digest", spy)
    caplog.set_level(logging.DEBUG)

    async def body():
        server = await started(ColourModel(), steer="operator", operator_token=secret,
                               ice_servers=("turn:booth:turn-PASS-99@127.0.0.1:3478",))
        try:
            ws, hello = await open_viewer(server)
            assert secret not in json.dumps(hello)
            for guess in (secret[:-1] + "b", secret + "x", "", secret.upper()):
                await ws.send(json.dumps({"type": "auth", "token": guess}))
                assert (await recv_type(ws, "error"))["code"] == "forbidden"
            await ws.send(json.dumps({"type": "teleport", "token": secret}))
            await recv_type(ws, "error")
            await ws.send(json.dumps({"type": "auth", "token": secret}))
            await recv_type(ws, "auth_ok")
            await ws.send(json.dumps({"type": "set", "ltc": False}))
            await recv_type(ws, "settings")
            await ws.close()
            base = f"http://127.0.0.1:{server.port}"
            metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(base + "/metrics", timeout=5).read())
            health = await asyncio.to_thread(lambda: urllib.request.urlopen(base + "/health", timeout=5).read())
            return metrics.decode() + health.decode()
        finally:
            await server.stop()
    exposed = run(body())
    assert len(compared) == 5 and compared[-1] == (secret.encode(), secret.encode())
    server_logs = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client"))
    assert "auth" in exposed or "ltc_" in exposed
    for leak in (secret, "turn-PASS-99"):
        assert leak not in server_logs
        assert leak not in exposed
    with pytest.raises(ConfigError) as err:
        parse_ice_server("turn:booth:turn-PASS-99@")
    assert "turn-PASS-99" not in str(err.value)


# --- abuse -------------------------------------------------------------------------------------
def test_floods_and_garbage_close_the_abuser_and_leave_viewers_streaming():
    async def body():
        server = await started(ColourModel(), message_rate=20.0, error_burst=10)
        try:
            ws, _ = await open_viewer(server)
            pc, frames = await start_video(ws)
            assert await wait_for(lambda: len(frames) >= 5, 15)
            garbage = [b"\x00\xff" * 10, "{", "[]", json.dumps({"type": "offer", "sdp": "v=0\r\nm=audio 9 x\r\n"}),
                       json.dumps({"type": "offer", "sdp": None}), '{"type": 1}', "[" * 5000 + "]" * 5000]
            abuser = await visitor(server, "127.0.0.2")
            await first_message(abuser)
            codes = []
            for raw in garbage:
                await abuser.send(raw)
                codes.append((await recv_type(abuser, "error"))["code"])
            assert set(codes) <= {"bad_message", "bad_json", "bad_sdp"} and len(codes) == len(garbage)
            flooder = await visitor(server, "127.0.0.3")
            await first_message(flooder)
            n = len(frames)
            # far past the rate limit and the error allowance
            _, replies = await send_pings(flooder, 500, yield_every=1, timeout=10)
            assert flooder.close_code == 1008
            errors = [m["code"] for m in replies if m["type"] == "error"]
            assert "rate_limited" in errors and errors[-1] == "too_many_errors"
            assert await wait_for(lambda: len(server.viewers) == 2, 5)  # the viewer and the garbage sender
            assert await wait_for(lambda: len(frames) >= n + 16, 10)
            await ws.send(json.dumps({"type": "ping", "t": 1}))
            assert (await recv_type(ws, "pong"))["t"] == 1
            await pc.close()
            for s in (ws, abuser):
                await s.close()
        finally:
            await server.stop()
    run(body(), 90)


def test_offers_are_budgeted_per_address_across_reconnects():
    async def body():
        server = await started(ColourModel(), offer_rate=0.2)
        try:
            bad_offer = json.dumps({"type": "offer", "sdp": "v=0\r\nnot a session\r\n"})
            ws = await visitor(server, "127.0.0.2")
            await first_message(ws)
            codes = []
            for _ in range(4):
                await ws.send(bad_offer)
                codes.append((await recv_type(ws, "error"))["code"])
            assert codes == ["bad_sdp"] * 3 + ["rate_limited"]
            await ws.close()
            again = await visitor(server, "127.0.0.2")  # a new socket brings no new allowance
            await first_message(again)
            await again.send(bad_offer)
            assert (await recv_type(again, "error"))["code"] == "rate_limited"
            other = await visitor(server, "127.0.0.3")  # another address has its own
            await first_message(other)
            await other.send(bad_offer)
            assert (await recv_type(other, "error"))["code"] == "bad_sdp"
            for s in (again, other):
                await s.close()
        finally:
            await server.stop()
    run(body())


def test_a_viewer_that_stops_reading_is_bounded_then_closed():
    async def body():
        server = await started(ColourModel(), message_rate=400.0, outbox_messages=8, send_timeout=1.5)
        try:
            ws, _ = await open_viewer(server)
            pc, frames = await start_video(ws)
            assert await wait_for(lambda: len(frames) >= 5, 15)
            slow = await asyncio.to_thread(NonReader, server.port, "127.0.0.2")
            assert await wait_for(lambda: any(v.address == "127.0.0.2" for v in server.viewers), 5)
            (stalled,) = [v for v in server.viewers if v.address == "127.0.0.2"]
            depth = []
            for _ in range(300):  # each ping's pong echoes 30 kB back at a client that reads nothing
                if stalled not in server.viewers or not await asyncio.to_thread(slow.ping, 30000):
                    break
                depth.append(stalled.outbox.qsize())
            assert max(depth) == 8  # full, never more
            assert await wait_for(lambda: stalled not in server.viewers, 10)
            assert server.metrics.messages_dropped._value.get() > 0
            assert server.metrics.refusals.labels("stalled")._value.get() == 1
            n = len(frames)
            assert await wait_for(lambda: len(frames) >= n + 16, 10)
            await recv_type(ws, "stats", 5)
            await pc.close()
            await ws.close()
            slow.close()
        finally:
            await server.stop()
    run(body(), 90)


# --- model faults ------------------------------------------------------------------------------
class FaultyModel(ColourModel):
    """ColourModel that raises on every chunk of a prompt saying "crash", and produces a NaN on
    the first chunk of a prompt saying "glitch" (as real models do: NonFiniteError)."""

    CRASH, GLITCH = torch.tensor([0.123, 0.0, 0.0]), torch.tensor([0.0, 0.456, 0.0])

    def __init__(self):
        super().__init__()
        self.glitched = 0
        self.new_streams = 0

    def encode_prompt(self, text):
        if "crash" in text:
            return self.CRASH
        if "glitch" in text:
            return self.GLITCH
        return super().encode_prompt(text)

    def new_stream(self, seed=0):
        self.new_streams += 1
        return super().new_stream(seed)

    def generate_chunk(self, state, embedding, *, ltc=True):
        if torch.equal(embedding, self.CRASH):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if torch.equal(embedding, self.GLITCH) and not self.glitched:
            self.glitched += 1
            raise NonFiniteError("NaN in the latent at step 3")
        return super().generate_chunk(state, embedding, ltc=ltc)


def test_a_model_fault_stops_or_restarts_one_stream_and_the_others_keep_streaming():
    async def body():
        model = FaultyModel()
        server = await started(model, mode="per-viewer", prompt="a green field", max_faults=3, blend_chunks=1)
        try:
            wsa, _ = await open_viewer(server)
            wsb, _ = await open_viewer(server)
            pca, frames_a = await start_video(wsa)
            pcb, frames_b = await start_video(wsb)
            assert await wait_for(lambda: len(frames_a) >= 5 and len(frames_b) >= 5, 15)
            # A: a NaN once -> told, restarted from a fresh context, streaming on
            made = model.new_streams
            await wsa.send(json.dumps({"type": "prompt", "text": "a glitch"}))
            err = await recv_type(wsa, "error", 5)
            assert err["code"] == "stream_fault"
            assert model.new_streams == made + 1
            n = len(frames_a)
            assert await wait_for(lambda: len(frames_a) >= n + 16, 10)
            # A: the model fails on every chunk -> A's stream stops, A is told and closed
            await wsa.send(json.dumps({"type": "prompt", "text": "crash now"}))
            err = await recv_type(wsa, "error", 5)
            assert err["code"] == "stream_failed" and "stopped" in err["message"]
            assert await closed(wsa) and wsa.close_code == 1011
            # B never noticed: same stream, still green, still moving, still answering
            nb = len(frames_b)
            assert await wait_for(lambda: len(frames_b) >= nb + 32, 10)
            green = np.array(COLOUR_WORDS["green"])
            assert np.abs(mean_colour(frames_b[-1]) - green).max() < 25
            await wsb.send(json.dumps({"type": "ping", "t": 2}))
            assert (await recv_type(wsb, "pong"))["t"] == 2
            assert len(server.viewers) == 1 and len(server._streams()) == 1
            assert server._streams()[0].generator.stats.errors == 0
            await pca.close()
            await pcb.close()
            await wsb.close()
        finally:
            await server.stop()
    run(body(), 90)


def test_shared_stream_that_fails_is_replaced_for_the_next_visitor():
    async def body():
        server = await started(FaultyModel(), prompt="a green field", max_faults=2, blend_chunks=1)
        try:
            ws, _ = await open_viewer(server)
            pc, frames = await start_video(ws)
            assert await wait_for(lambda: len(frames) >= 5, 15)
            failing = server.shared
            await ws.send(json.dumps({"type": "prompt", "text": "crash please"}))
            assert (await recv_type(ws, "error", 5))["code"] == "stream_failed"
            assert await closed(ws)
            await pc.close()
            assert server.shared is not failing and server.shared.generator.prompt == "a green field"
            assert await wait_for(lambda: not failing.pump._task or failing.pump._task.done(), 5)
            ws2, hello = await open_viewer(server)
            assert hello["prompt"] == "a green field"
            pc2, frames2 = await start_video(ws2)
            assert await wait_for(lambda: len(frames2) >= 8, 15)
            green = np.array(COLOUR_WORDS["green"])
            assert np.abs(mean_colour(frames2[-1]) - green).max() < 25
            await pc2.close()
            await ws2.close()
        finally:
            await server.stop()
    run(body(), 60)


# --- SIGTERM -----------------------------------------------------------------------------------
SERVE_SCRIPT = """
import asyncio, sys
sys.path.insert(0, {tests!r})
from conftest import ColourModel
from ltc_stream.server.app import ServerConfig, _serve
asyncio.run(_serve(ColourModel(), ServerConfig(port=0)))
"""


def test_sigterm_says_goodbye_and_exits_within_seconds():
    script = SERVE_SCRIPT.format(tests=str(Path(__file__).parent))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "serving" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
        port = int(line.split("127.0.0.1:")[1].split("/")[0])

        async def body():
            ws = await connect(f"ws://127.0.0.1:{port}/ws")
            await recv_type(ws, "hello")
            pc, frames = await start_video(ws)
            assert await wait_for(lambda: len(frames) >= 3, 15)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            bye = await recv_type(ws, "goodbye", 5)
            assert await closed(ws)
            await pc.close()
            return bye, ws.close_code, time.monotonic() - sent
        bye, code, _ = run(body())
        started_exit = time.monotonic()
        rc = proc.wait(timeout=10)
        assert bye["code"] == "shutting_down" and code == 1001
        assert rc == 0 and time.monotonic() - started_exit < 5
        assert "Traceback" not in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- connection settings -----------------------------------------------------------------------
def test_ice_server_urls():
    stun = parse_ice_server("stun:stun.example.org:3478")
    assert (stun.urls, stun.username, stun.credential) == ("stun:stun.example.org:3478", None, None)
    turn = parse_ice_server("turn:booth:p%40ss%3Aword@turn.example.org:3478?transport=tcp")
    assert turn.urls == "turn:turn.example.org:3478?transport=tcp"
    assert (turn.username, turn.credential) == ("booth", "p@ss:word")
    assert parse_ice_server("turns:u:p@turn.example.org:5349").urls == "turns:turn.example.org:5349"
    for bad in ("http://stun.example.org", "stun:", "turn:turn.example.org:3478", "turn:user@host:3478",
                "turn:user:pw@", "stun.example.org:3478"):
        with pytest.raises(ConfigError, match="ice-server"):
            parse_ice_server(bad)


class StunResponder(asyncio.DatagramProtocol):
    """A STUN server (RFC 5389 Binding, XOR-MAPPED-ADDRESS only) recording who asked."""

    MAGIC = 0x2112A442

    def __init__(self):
        self.requests = []

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if len(data) < 20:
            return
        kind, _, magic = struct.unpack("!HHI", data[:8])
        if kind != 0x0001 or magic != self.MAGIC:
            return
        self.requests.append(addr)
        ip = struct.unpack("!I", socket.inet_aton(addr[0]))[0]
        attr = struct.pack("!HHBBHI", 0x0020, 8, 0, 1, addr[1] ^ (self.MAGIC >> 16), ip ^ self.MAGIC)
        self.transport.sendto(struct.pack("!HHI", 0x0101, len(attr), self.MAGIC) + data[8:20] + attr, addr)


def test_ice_servers_reach_aiortc_and_the_page():
    async def body():
        loop = asyncio.get_running_loop()
        transport, stun = await loop.create_datagram_endpoint(StunResponder, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        server = await started(ColourModel(), ice_servers=(f"stun:127.0.0.1:{port}",))
        try:
            ws, hello = await open_viewer(server)
            assert hello["ice_servers"] == [{"urls": f"stun:127.0.0.1:{port}"}]
            pc, frames = await start_video(ws)
            assert await wait_for(lambda: len(frames) >= 3, 15)
            assert stun.requests, "the server's peer connection never asked the STUN server"
            await pc.close()
            await ws.close()
        finally:
            await server.stop()
            transport.close()
    run(body())


def test_hello_carries_turn_credentials_for_the_page():
    async def body():
        server = await started(ColourModel(), ice_servers=("turn:booth:pw@turn.example.org:3478?transport=tcp",))
        try:
            ws, hello = await open_viewer(server)
            assert hello["ice_servers"] == [{"urls": "turn:turn.example.org:3478?transport=tcp",
                                             "username": "booth", "credential": "pw"}]
            await ws.close()
        finally:
            await server.stop()
    run(body())


def test_two_servers_in_one_process_keep_their_own_bitrates():
    from aiortc.codecs import vpx

    module_default = vpx.DEFAULT_BITRATE

    async def body():
        low = await started(ColourModel(), video_bitrate=300_000)
        high = await started(ColourModel(), video_bitrate=1_200_000)
        try:
            clients = []
            for server in (low, high):
                ws, _ = await open_viewer(server)
                pc, frames = await start_video(ws)
                clients.append((ws, pc, frames))
            assert await wait_for(lambda: all(len(f) >= 5 for _, _, f in clients), 15)
            rates = []
            for server in (low, high):
                (viewer,) = server.viewers
                (sender,) = viewer.pc.getSenders()
                rates.append(sender._RTCRtpSender__encoder.target_bitrate)
            for ws, pc, _ in clients:
                await pc.close()
                await ws.close()
            return rates
        finally:
            await low.stop()
            await high.stop()
    assert run(body()) == [300_000, 1_200_000]
    assert vpx.DEFAULT_BITRATE == module_default == 500_000


def test_serve_flags(capsys):
    import argparse

    from ltc_stream import cli

    parser = argparse.ArgumentParser()
    server_app.add_arguments(parser)
    args = parser.parse_args(["--ice-server", "stun:stun.example.org", "--ice-server", "turn:u:p@t.example.org:3478",
                              "--allowed-origin", "https://booth.example.org", "--offer-deadline", "5",
                              "--max-per-address", "3", "--max-negotiating", "6", "--video-bitrate", "800000",
                              "--log-level", "debug"])
    cfg = ServerConfig(**server_app.connection_options(args))
    cfg.validate()
    assert cfg.ice_servers == ("stun:stun.example.org", "turn:u:p@t.example.org:3478")
    assert (cfg.allowed_origins, cfg.offer_deadline, cfg.max_per_address, cfg.negotiating_limit,
            cfg.video_bitrate) == (("https://booth.example.org",), 5.0, 3, 6, 800000)
    assert ServerConfig(max_viewers=8).negotiating_limit == 4 and ServerConfig(max_viewers=1).negotiating_limit == 2
    # a bad value is one line and exit 2, before any model loads; the password is not echoed
    assert cli.main(["serve", "--ice-server", "turn:user:hunter2@", "--log-level", "warning"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ice-server" in err and "hunter2" not in err
    assert logging.getLogger("websockets").getEffectiveLevel() >= logging.WARNING
    assert cli.main(["serve", "--offer-deadline", "0"]) == 2
