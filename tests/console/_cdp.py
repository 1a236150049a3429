"""A small Chrome DevTools protocol client: headless Chromium driven over ``--remote-debugging-pipe``.

The pipe (commands on the browser's fd 3, replies on its fd 4, each message JSON ended by a NUL)
needs no websocket client and no port: nothing but the standard library and the system's Chromium.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["Browser", "CdpError", "Page", "find_chromium", "launch"]

_COMMAND_TIMEOUT = 30.0


class CdpError(Exception):
    """A command the browser answered with an error (or a page script that threw)."""

    def __init__(self, method: str, error: object) -> None:
        self.method = method
        self.error = error
        super().__init__(f"{method} failed: {error}")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium process; ``page()`` opens a tab."""

    def __init__(self, proc: asyncio.subprocess.Process, writer: int, reader: asyncio.StreamReader, log: Path) -> None:
        self._proc = proc
        self._log = log
        self._writer = writer
        self._reader = reader
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pump = asyncio.create_task(self._read_replies())

    async def _read_replies(self) -> None:
        while True:
            try:
                raw = await self._reader.readuntil(b"\0")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                break
            message = json.loads(raw[:-1])
            waiter = self._waiting.pop(message.get("id", -1), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError(f"the browser closed its pipe; its log:\n{self.log_text()}"))

    def log_text(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    async def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None) -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._next_id] = waiter
        os.write(self._writer, json.dumps(message).encode() + b"\0")
        reply = await asyncio.wait_for(waiter, _COMMAND_TIMEOUT)
        if "error" in reply:
            raise CdpError(method, reply["error"])
        return reply.get("result", {})

    async def page(self, *, width: int = 1280, height: int = 900) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": width,
                "height": height,
                "deviceScaleFactor": 1,
                "mobile": False,
            },
        )
        return page

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send("Browser.close"), 5)
        try:
            await asyncio.wait_for(self._proc.wait(), 10)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        os.close(self._writer)


class Page:
    """One tab: navigate, evaluate scripts, type, take screenshots."""

    def __init__(self, browser: Browser, session: str) -> None:
        self._browser = browser
        self._session = session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self._browser.send(method, params, session=self._session)

    async def goto(self, url: str, *, timeout: float = _COMMAND_TIMEOUT) -> None:
        """Navigates to ``url`` and returns once its document has loaded (its scripts have run)."""
        await self.send("Page.enable")
        reply = await self.send("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise CdpError("Page.navigate", reply["errorText"])
        async with asyncio.timeout(timeout):
            while not await self.evaluate(f"location.href === {json.dumps(url)} && document.readyState === 'complete'"):  # noqa: ASYNC110 - the protocol's load events would need a subscription for one wait
                await asyncio.sleep(0.05)

    async def evaluate(self, expression: str) -> Any:
        """The value of a page script (awaited when it is a promise); CdpError when it throws."""
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            raise CdpError("Runtime.evaluate", result["exceptionDetails"])
        return result["result"].get("value")

    async def press(self, key: str, *, code: str = "", key_code: int = 0, text: str = "") -> None:
        """One key pressed and released (as a person's keyboard sends it); ``text`` what it types."""
        down: dict[str, Any] = {"type": "keyDown", "key": key, "code": code or key, "windowsVirtualKeyCode": key_code}
        if text:
            down["text"] = text
        await self.send("Input.dispatchKeyEvent", down)
        await self.send(
            "Input.dispatchKeyEvent",
            {"type": "keyUp", "key": key, "code": code or key, "windowsVirtualKeyCode": key_code},
        )

    async def type(self, text: str) -> None:
        """Text typed into the focused element."""
        await self.send("Input.insertText", {"text": text})

    async def screenshot(self, path: Path, *, selector: str | None = None) -> None:
        """A PNG of the whole page, or of the element ``selector`` finds."""
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": True}
        if selector is not None:
            box = await self.evaluate(
                f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                " return {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height}; })()"
            )
            params["clip"] = {**box, "scale": 1}
        shot = await self.send("Page.captureScreenshot", params)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))


def _profile() -> tuple[str, Path, BinaryIO]:
    """A new browser profile folder, and the file there that takes the browser's output."""
    profile = tempfile.mkdtemp(prefix="meshgate-chromium-")
    log_path = Path(profile) / "chromium.log"
    return profile, log_path, log_path.open("wb")


@contextlib.asynccontextmanager
async def launch(executable: str) -> AsyncIterator[Browser]:
    """A headless Chromium with its own profile, closed on exit."""
    commands_r, commands_w = os.pipe()
    replies_r, replies_w = os.pipe()
    # The child's ends moved above fd 9: were one of them 3 or 4 itself, the redirections below
    # would overwrite it before it is read.
    for end in ("commands_r", "replies_w"):
        low = commands_r if end == "commands_r" else replies_w
        high = fcntl.fcntl(low, fcntl.F_DUPFD, 10)
        os.close(low)
        if end == "commands_r":
            commands_r = high
        else:
            replies_w = high
    profile, log_path, log = _profile()
    args = [
        executable,
        "--headless",
        "--remote-debugging-pipe",
        # As root (CI, containers) Chromium refuses to start with its sandbox.
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    # The browser reads commands on fd 3 and writes replies on fd 4: a small Python step puts the
    # pipe ends there (sh's redirections stop at fd 9) and becomes the browser.
    script = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4);"
        " os.close(int(sys.argv[1])); os.close(int(sys.argv[2])); os.execv(sys.argv[3], sys.argv[3:])"
    )
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            str(commands_r),
            str(replies_w),
            *args,
            pass_fds=(commands_r, replies_w),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
    finally:
        log.close()
        os.close(commands_r)
        os.close(replies_w)
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(replies_r, "rb", buffering=0)
    )
    browser = Browser(proc, commands_w, reader, log_path)
    try:
        yield browser
    finally:
        await browser.close()
        transport.close()
        shutil.rmtree(profile, ignore_errors=True)
