"""Headless Chromium driven through the DevTools protocol over a pipe: the standard library only.

``chromium --remote-debugging-pipe`` reads JSON commands, each ended by a NUL byte, from file
descriptor 3 and writes answers and events to descriptor 4; commands for a page carry the
``sessionId`` of ``Target.attachToTarget(flatten=True)``. This module opens a page, records every
request the page makes (``Network.requestWillBeSent``), evaluates JavaScript in it and takes
screenshots. Debian's ``chromium`` package is what ``.ci/run`` installs.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    """The browser's executable: ``$CURVKIT_CHROMIUM``, else the first of :data:`CANDIDATES` on the path."""
    override = os.environ.get("CURVKIT_CHROMIUM")
    if override:
        return override
    return next((path for path in map(shutil.which, CANDIDATES) if path), None)


class Browser:
    """One headless browser with one page; use as a context manager.

    Args:
        executable: The Chromium binary.
        width: Viewport width in CSS pixels.
        height: Viewport height.
        timeout: Seconds any single wait may take.
    """

    def __init__(self, executable: str, width: int = 1100, height: int = 1800, timeout: float = 60.0):
        self._timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="curvkit-chromium-")
        to_browser, self._commands = os.pipe()
        self._answers, from_browser = os.pipe()
        flags = ["--headless", "--remote-debugging-pipe", "--disable-gpu", "--no-first-run"]
        flags += [
            "--disable-background-networking",
            "--disable-extensions",
            f"--user-data-dir={self._profile.name}",
        ]
        if os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to run its sandbox as root (CI's machines)

        def as_fds_3_and_4() -> None:
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self._process = subprocess.Popen(
            [executable, *flags, "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=as_fds_3_and_4,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.page(f"{domain}.enable")
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.page("Emulation.setDeviceMetricsOverride", metrics)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self._process.wait(timeout=self._timeout)
        except Exception:
            self._process.kill()
            self._process.wait()
        finally:
            os.close(self._commands)
            os.close(self._answers)
            self._profile.cleanup()

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict[str, Any]:
        """Send a command and return its result; events that arrive meanwhile go to :attr:`events`.

        Raises:
            RuntimeError: If the browser answers with an error.
        """
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._receive()
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def page(self, method: str, params: dict | None = None) -> dict[str, Any]:
        """:meth:`call` in the page's session."""
        return self.call(method, params, self._session)

    def open(self, path: Path) -> None:
        """Navigate to a local file and wait until it has loaded (images included)."""
        self.events.clear()
        self.page("Page.navigate", {"url": path.resolve().as_uri()})
        while not any(event.get("method") == "Page.loadEventFired" for event in self.events):
            self.events.append(self._receive())

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result["result"].get("value")

    def requested_urls(self) -> list[str]:
        """Every URL the page requested since it was opened (the page itself, data URLs, anything else)."""
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def screenshot(self, path: Path) -> None:
        """Save the viewport as a PNG."""
        path.write_bytes(base64.b64decode(self.page("Page.captureScreenshot", {"format": "png"})["data"]))

    def _receive(self) -> dict[str, Any]:
        deadline = time.monotonic() + self._timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._answers], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer within {self._timeout} s.")
            chunk = os.read(self._answers, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe.")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)
