"""The product as a person meets it: Debian's chromium, driven by Playwright, plays the stream,
takes a typed prompt and shows the changed picture; kiosk mode loads."""
from __future__ import annotations

import asyncio
import io
import os
import threading

import numpy as np
import pytest

from ltc_stream.server.app import ServerConfig, StreamServer

from conftest import COLOUR_WORDS, ColourModel

CHROMIUM = "/usr/bin/chromium"
# LocalNetworkAccessChecks: recent Chromium itself keeps other origins' pages off loopback; it is off
# here so the foreign-page test meets the server's own Origin check (other and older browsers have none)
FLAGS = ["--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required",
         "--disable-features=WebRtcHideLocalIpsWithMdns,LocalNetworkAccessChecks", "--disable-background-networking"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (bash setup.sh --test installs it)"),
]


class ServerThread:
    """A StreamServer on its own event loop in a background thread."""

    def __init__(self, model, **cfg):
        self.loop = asyncio.new_event_loop()
        self.server = StreamServer(model, ServerConfig(port=0, **cfg))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        return self.server

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def video_colour(page) -> np.ndarray:
    from PIL import Image

    png = page.locator("#video").screenshot()
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
    h, w = img.shape[:2]
    return img[h // 3: 2 * h // 3, w // 3: 2 * w // 3].reshape(-1, 3).mean(0)


def wait_colour(page, rgb, timeout_s=20.0, tol=30.0) -> np.ndarray:
    target = np.array(rgb, np.float32)
    seen = None
    for _ in range(int(timeout_s / 0.25)):
        seen = video_colour(page)
        if np.abs(seen - target).max() < tol:
            return seen
        page.wait_for_timeout(250)
    raise AssertionError(f"video colour {seen} never reached {rgb}")


def test_page_plays_and_a_typed_prompt_changes_the_picture(browser):
    model = ColourModel()
    model.example_prompts = ("a yellow sun", "a green field")  # the model's ideas: shown as buttons
    with ServerThread(model, prompt="a red square") as server:
        page = browser.new_page(viewport={"width": 900, "height": 900})
        page.goto(server.url)
        page.wait_for_function("window.ltc && window.ltc.framesDecoded > 10", timeout=20000)
        first = page.evaluate("window.ltc.framesDecoded")
        page.wait_for_function(f"window.ltc.framesDecoded > {first + 10}", timeout=10000)
        red = wait_colour(page, COLOUR_WORDS["red"])

        page.fill("#prompt", "a big blue square")
        page.press("#prompt", "Enter")
        page.wait_for_function("window.ltc.acks.length > 0", timeout=10000)
        assert page.evaluate("window.ltc.acks[0].text") == "a big blue square"
        blue = wait_colour(page, COLOUR_WORDS["blue"])
        assert np.abs(red - blue).max() > 100
        assert page.locator("#history li").first.inner_text() == "a big blue square"
        page.wait_for_function("window.ltc.stats && window.ltc.stats.generation_fps > 0", timeout=5000)
        # one click on an idea steers like typing it
        assert page.locator("#examples button").all_inner_texts() == ["a yellow sun", "a green field"]
        page.locator("#examples button", has_text="a green field").click()
        page.wait_for_function("window.ltc.acks.length > 1", timeout=10000)
        assert page.evaluate("window.ltc.acks[1].text") == "a green field"
        wait_colour(page, COLOUR_WORDS["green"])
        page.close()


def test_kiosk_mode_loads_full_screen_with_a_large_prompt(browser):
    with ServerThread(ColourModel(), prompt="a green field") as server:
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(server.url + "?kiosk=1&idle=1")
        page.wait_for_function("window.ltc && window.ltc.framesDecoded > 5", timeout=20000)
        assert page.evaluate("document.body.classList.contains('kiosk')")
        font_px = float(page.evaluate("getComputedStyle(document.getElementById('prompt')).fontSize").rstrip("px"))
        assert font_px >= 24
        box = page.locator(".stage").bounding_box()
        assert box["height"] >= 700
        # nobody types: the idle loop steers with a curated prompt
        page.wait_for_function("window.ltc.acks.length > 0", timeout=10000)
        assert page.evaluate("window.ltc.acks[0].text") != "a green field"
        page.close()


def test_the_page_uses_the_servers_ice_servers_and_a_foreign_page_is_refused(browser):
    stun = "stun:127.0.0.1:9"  # nothing answers there: gathering gives up on it, the host candidates still work
    with ServerThread(ColourModel(), ice_servers=(stun, "turn:booth:pw@127.0.0.1:9")) as server:
        page = browser.new_page()
        page.goto(server.url)
        page.wait_for_function("window.ltc && window.ltc.framesDecoded > 5", timeout=30000)
        ice = page.evaluate("window.ltc.iceServers")
        assert [s["urls"] for s in ice] == [[stun], ["turn:127.0.0.1:9"]]
        assert ice[1]["username"] == "booth" and ice[1]["credential"] == "pw"
        page.close()

        # cross-site WebSocket hijacking: a page of another origin opens the booth's socket
        foreign = browser.new_page()
        elsewhere = "http://elsewhere.example/"
        foreign.route(elsewhere, lambda route: route.fulfill(body="<title>elsewhere</title>", content_type="text/html"))
        foreign.goto(elsewhere)
        got = foreign.evaluate("""port => new Promise((resolve) => {
            const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`), seen = [];
            ws.onopen = () => ws.send(JSON.stringify({type: "prompt", text: "a blue square"}));
            ws.onmessage = (ev) => seen.push(JSON.parse(ev.data));
            ws.onclose = (ev) => resolve({seen, code: ev.code});
            setTimeout(() => resolve({seen, code: null}), 8000);
        })""", server.port)
        assert [m["type"] for m in got["seen"]] == ["error"] and got["seen"][0]["code"] == "origin_not_allowed"
        assert got["code"] == 1008
        assert server.shared.generator.prompt != "a blue square"
        foreign.close()
