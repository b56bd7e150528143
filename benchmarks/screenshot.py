"""The README's screenshot, from a real browser run of the current build.

    python3 benchmarks/screenshot.py [--model default] [--out client_web/screenshot.png]

Starts `ltc-stream serve` on a free loopback port, opens the page in Debian's chromium through
Playwright (as the browser tests do), waits until the video has played for a few seconds, and
saves the page. Needs `bash setup.sh --test` (Playwright and /usr/bin/chromium).
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request

FLAGS = ["--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required",
         "--disable-features=WebRtcHideLocalIpsWithMdns", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", default="client_web/screenshot.png")
    parser.add_argument("--seconds", type=float, default=6.0, help="video played before the shot")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ltc_stream", "serve", "--model", args.model,
                               "--port", str(port), "--log-level", "warning"])
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    print("screenshot: the server did not come up", file=sys.stderr)
                    return 1
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("() => { const v = document.querySelector('video');"
                                   " return v && v.currentTime > 0 && v.videoWidth > 0; }", timeout=60_000)
            time.sleep(args.seconds)
            page.screenshot(path=args.out)
            browser.close()
        print(f"screenshot: {args.out}")
        return 0
    finally:
        server.terminate()
        server.wait(15)


if __name__ == "__main__":
    sys.exit(main())
