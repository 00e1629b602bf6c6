"""A real headless browser for the tests: Debian's ``chromium``, driven over the DevTools protocol.

Playwright cannot download its browsers here, so the tests talk to Chromium's remote-debugging
WebSocket themselves: open a page, wait until a JavaScript expression is true, read values back.
No tests here; ``chromium_path()`` is None where no Chromium is installed (the Makefile installs
Debian's ``chromium`` package when it can).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import httpx

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Page:
    """One browser tab: ``goto``, ``evaluate``, ``wait_for``."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self._ws = connect(ws_url, max_size=64 << 20, open_timeout=30)
        self._next = 0
        self.console: list[str] = []
        self._call("Runtime.enable")
        self._call("Page.enable")

    def _call(self, method: str, **params) -> dict:
        self._next += 1
        ident = self._next
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv(timeout=60))
            if msg.get("method") == "Runtime.consoleAPICalled":
                args = msg["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", "")) for a in args))
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def goto(self, url: str) -> None:
        self._call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self._call("Runtime.evaluate", expression=expression, returnByValue=True,
                            awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, what: str | None = None):
        """Poll until the expression is truthy; its value, or AssertionError with the page text."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RuntimeError):
                value = self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                text = self.text()[:2000]
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for "
                                     f"{what or expression}; the page shows:\n{text}")
            time.sleep(0.5)

    def click_text(self, label: str, timeout: float = 60.0) -> None:
        """Click the innermost element whose visible text is exactly ``label`` (a tab, a
        button), waiting for it to appear."""
        found = json.dumps(label)
        self.wait_for(
            f"(() => {{ const e = [...document.querySelectorAll('*')].filter(e => "
            f"e.innerText && e.innerText.trim() === {found} && ![...e.children].some("
            f"c => c.innerText && c.innerText.trim() === {found})); "
            f"if (!e.length) return false; e[0].click(); return true; }})()",
            timeout, what=f"an element labelled {label!r} to click")

    def text(self) -> str:
        with contextlib.suppress(RuntimeError):
            return self.evaluate("document.body ? document.body.innerText : ''") or ""
        return ""

    def screenshot(self, path: str) -> None:
        import base64

        data = self._call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ws.close()


@contextlib.contextmanager
def browser(width: int = 1400, height: int = 1000) -> Iterator[Page]:
    """A headless Chromium with one page; stopped (and its profile removed) afterwards."""
    exe = chromium_path()
    if exe is None:
        raise RuntimeError("no chromium on PATH (apt-get install chromium)")
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="tomopipe-chromium-")
    proc = subprocess.Popen(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
         f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
         f"--window-size={width},{height}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "HOME": profile})
    page = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                tabs = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                target = next(t for t in tabs if t.get("type") == "page")
                break
            except (httpx.HTTPError, StopIteration, ValueError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"chromium did not open its debugging port "
                                       f"(exit {proc.poll()})") from None
                time.sleep(0.3)
        page = Page(target["webSocketDebuggerUrl"])
        yield page
    finally:
        if page is not None:
            page.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
