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


class ChildProcess:
    """A Python child (``python ARGS...``, e.g. ``-m meshgate up ...``) whose output is kept in ``log``.

    ``launch(ready=...)`` returns once a line of its output matches ``ready`` (no fixed sleep),
    raising if the child exits first. ``close(grace=...)`` sends SIGTERM (it drains) and kills it
    after ``grace`` s; with no grace it kills at once. ``env`` is added to this process's environment,
    or with ``inherit_env=False`` is the child's whole environment.
    """

    def __init__(
        self, *, args: tuple[str, ...], env: Mapping[str, str] | None = None, inherit_env: bool = True
    ) -> None:
        self.args = args
        self.env = dict(env or {})
        self.inherit_env = inherit_env
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[bytes] = []
        self._pump: asyncio.Task[None] | None = None

    async def launch(self, *, ready: re.Pattern[bytes] | None = None, timeout: float = 30.0) -> re.Match[bytes] | None:
        env = {**(os.environ if self.inherit_env else {}), **self.env, "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, *self.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
        )
        stdout = self.proc.stdout
        if stdout is None:
            raise RuntimeError("no stdout pipe")
        found = None
        if ready is not None:
            async with asyncio.timeout(timeout):
                while found is None:
                    line = await stdout.readline()
                    if not line:
                        raise RuntimeError(f"{self.args[:3]} exited early:\n{self.text()}")
                    self.log.append(line)
                    found = ready.search(line)
        self._pump = asyncio.create_task(self._drain_output(stdout))
        return found

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

    async def close(self, *, grace: float = 0.0) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            if grace > 0:
                proc.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), grace)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump


class ServeProcess(ChildProcess):
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
        super().__init__(
            args=(
                "-m", "meshgate", "serve", "-c", str(config), "--region", region,
                "--data-dir", str(data_dir), "--listen", "127.0.0.1:0", *extra,
            ),
            env=env,
        )  # fmt: skip
        self.config = config
        self.address = ""

    async def start(self, timeout: float = 30.0) -> str:
        found = await self.launch(ready=_SERVING, timeout=timeout)
        assert found is not None
        self.address = found.group(1).decode()
        return self.address
