"""Debian's chromium, headless, driven over the Chrome DevTools Protocol (no browser download, no
driver binary): evaluate JavaScript in a page, collect console errors and exceptions, take
screenshots. aiohttp (installed with Faust) speaks the protocol's WebSocket.

    with Browser() as browser:
        page = browser.open("http://127.0.0.1:8765/")
        page.wait_for("document.body.dataset.snapshots > 2")
        page.screenshot(path)
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import free_port

__all__ = ["Browser", "Page", "chromium_path"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is needed (.ci/run installs it)"
    return path


class Page:
    """One tab: ``evaluate`` JavaScript, ``wait_for`` a condition, ``screenshot``; ``errors`` holds
    every console error and uncaught exception seen so far."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.loop, self.ws = loop, ws
        self.errors: list[str] = []
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._reader = asyncio.run_coroutine_threadsafe(self._read(), loop)

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data and data["id"] in self._waiting:
                self._waiting.pop(data["id"]).set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled" and data["params"]["type"] in ("error", "assert"):
                self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in data["params"]["args"]))
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.errors.append(details.get("exception", {}).get("description") or details.get("text", "?"))
            elif data.get("method") == "Log.entryAdded" and data["params"]["entry"]["level"] == "error":
                self.errors.append(data["params"]["entry"]["text"])

    def call(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        async def send() -> dict[str, Any]:
            number = next(self._ids)
            future = self.loop.create_future()
            self._waiting[number] = future
            await self.ws.send_str(json.dumps({"id": number, "method": method, "params": params}))
            return await asyncio.wait_for(future, timeout)

        answer = asyncio.run_coroutine_threadsafe(send(), self.loop).result(timeout + 5)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"not true within {timeout:.0f} s: {expression}")

    def screenshot(self, path: Path) -> None:
        height = self.evaluate("document.documentElement.scrollHeight")
        size = {"width": 1400, "height": int(height), "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", **size)
        time.sleep(0.5)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))


class Browser:
    """A headless chromium with a DevTools port, and an event loop thread to talk to it."""

    def __enter__(self) -> Browser:
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="segstream-chromium-")
        self.proc = subprocess.Popen(
            [
                chromium_path(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                f"--remote-debugging-port={self.port}",
                f"--user-data-dir={self.profile}",
                "--window-size=1400,1000",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.session = asyncio.run_coroutine_threadsafe(self._session(), self.loop).result(10)
        return self

    async def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def _targets(self) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as answer:
                    return json.loads(answer.read())
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def open(self, url: str) -> Page:
        target = next(t for t in self._targets() if t["type"] == "page")
        connect = self.session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        ws = asyncio.run_coroutine_threadsafe(connect, self.loop).result(10)
        page = Page(self.loop, ws)
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            page.call(domain)
        page.call("Page.navigate", url=url)
        page.wait_for("document.readyState === 'complete'")
        return page

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.session.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
