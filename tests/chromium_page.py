"""Read a rendered page in headless Chromium through the DevTools protocol: what the DOM dump
cannot say (an image's decoded size, the text a person sees, hidden copies left out).

``read_pages(chromium, folder, [(url, ready), ...])`` opens each ``url`` in turn in one fresh headless
Chromium (its profile under ``folder``) and evaluates the JavaScript expression ``ready`` every half
second until it returns something truthy; returns those values (JSON), or fails with the page's
visible text. A screenshot of each page as it was read is left in ``folder/page-N.png``.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.request
from pathlib import Path

PAGE_TIMEOUT_S = 120

IMAGES_AND_TEXT = """(() => {
  const text = document.body ? document.body.innerText : "";
  const images = [...document.querySelectorAll("img")]
    .filter(i => i.src.startsWith("data:image/png") && i.offsetParent !== null)
    .map(i => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight, alt: i.alt}));
  return {text, images};
})()"""


def read_pages(chromium: str, folder: Path, pages: list[tuple[str, str]], timeout_s: float = PAGE_TIMEOUT_S) -> list:
    """The value of each expression ``ready`` once truthy on its rendered ``url`` (see the module)."""
    folder.mkdir(parents=True, exist_ok=True)
    profile = folder / "cdp-profile"
    process = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-allow-origins=*",
         "--window-size=1400,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = _devtools_port(profile, process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            [page] = [t for t in json.load(response) if t["type"] == "page"][:1]
        return [_evaluate_until(page["webSocketDebuggerUrl"], url, ready, timeout_s, folder / f"page-{n}.png")
                for n, (url, ready) in enumerate(pages, 1)]
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _devtools_port(profile: Path, process: subprocess.Popen) -> int:
    deadline = time.monotonic() + 60
    marker = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode} before it listened")
        if marker.is_file() and marker.read_text().strip():
            return int(marker.read_text().split()[0])
        time.sleep(0.2)
    raise TimeoutError("chromium did not open its DevTools port in 60 s")


def _evaluate_until(socket_url: str, url: str, ready: str, timeout_s: float, screenshot: Path):
    from websockets.sync.client import connect

    with connect(socket_url, max_size=None, open_timeout=30) as socket:
        ids = iter(range(1, 1_000_000))

        def call(method: str, **params):
            sent = next(ids)
            socket.send(json.dumps({"id": sent, "method": method, "params": params}))
            while True:
                message = json.loads(socket.recv(timeout=60))
                if message.get("id") == sent:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return message["result"]

        call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        while True:
            result = call("Runtime.evaluate", expression=ready, returnByValue=True)
            value = result.get("result", {}).get("value")
            if value:
                shot = call("Page.captureScreenshot", format="png")
                screenshot.write_bytes(base64.b64decode(shot["data"]))  # to see what was read
                return value
            if time.monotonic() > deadline:
                text = call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                            returnByValue=True)["result"].get("value", "")
                raise AssertionError(f"{url} was not ready in {timeout_s} s; it shows: {text[-3000:]}")
            time.sleep(0.5)
