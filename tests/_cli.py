"""``python -m meshgate ...`` as a child process, for the tests that check what a person at the CLI sees."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping

__all__ = ["run_cli"]


async def run_cli(
    *args: str, env: Mapping[str, str] | None = None, stdin: bytes | None = None, timeout: float = 60.0
) -> tuple[int, str, str]:
    """``meshgate ARGS``: its exit status, stdout and stderr. ``env`` is the child's whole
    environment (None: this process's). A child still running after ``timeout`` s is killed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshgate",
        *args,
        stdin=asyncio.subprocess.PIPE,  # closed at once when there is no input: never the terminal
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=None if env is None else dict(env),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
