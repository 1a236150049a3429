"""`meshgate serve` as a child process, ready when its log says where it serves (no fixed sleep)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

_SERVING = re.compile(rb"gateway serving on (\S+)")


class ServeProcess:
    """Runs ``meshgate serve`` on a free port; ``start()`` returns its HOST:PORT once serving.

    ``env`` is added to this process's environment for the child (e.g. ``OTEL_*`` variables).
    """

    def __init__(
        self,
        *,
        config: Path,
        region: str,
        data_dir: Path,
        extra: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.env = dict(env or {})
        self.args = (
            "-m", "meshgate", "serve", "-c", str(config), "--region", region,
            "--data-dir", str(data_dir), "--listen", "127.0.0.1:0", *extra,
        )  # fmt: skip
        self.proc: asyncio.subprocess.Process | None = None
        self.address = ""
        self.log: list[bytes] = []
        self._pump: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> str:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, *self.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
        )
        stdout = self.proc.stdout
        if stdout is None:
            raise RuntimeError("no stdout pipe")
        async with asyncio.timeout(timeout):
            while True:
                line = await stdout.readline()
                if not line:
                    raise RuntimeError("meshgate serve exited early:\n" + b"".join(self.log).decode(errors="replace"))
                self.log.append(line)
                m = _SERVING.search(line)
                if m:
                    self.address = m.group(1).decode()
                    break
        self._pump = asyncio.create_task(self._drain_output(stdout))
        return self.address

    async def _drain_output(self, stdout: asyncio.StreamReader) -> None:
        # Keep reading so a chatty child never blocks on a full pipe.
        while line := await stdout.readline():
            self.log.append(line)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("not started")
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is None:
            raise RuntimeError("not started")
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            raise RuntimeError("not started")
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._pump, 5)
        return rc

    def text(self) -> str:
        return b"".join(self.log).decode(errors="replace")

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._pump is not None:
            self._pump.cancel()
