"""Freezing a child process for a fault test: SIGSTOP, and wait until it has taken effect."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path


def all_threads_stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped (state ``T`` in /proc)."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            text = stat.read_text()
        except FileNotFoundError:  # a thread that exited meanwhile
            continue
        # "tid (comm) S ...": the name may hold spaces and parentheses, the state follows the last ")".
        states.append(text[text.rindex(")") + 2])
    return bool(states) and all(state == "T" for state in states)


async def freeze(pid: int, *, timeout: float = 10.0) -> None:
    """SIGSTOPs ``pid`` and returns once all its threads are stopped (``TimeoutError`` after ``timeout``).

    kill() returns once the signal is queued: one thread of the process takes it and then stops
    the others. Until that thread gets a CPU (a while on a loaded machine) the rest keep running,
    and a "frozen" server still answers what the test sends it next. SIGCONT thaws it.
    """
    os.kill(pid, signal.SIGSTOP)
    async with asyncio.timeout(timeout):
        while not all_threads_stopped(pid):  # noqa: ASYNC110 - /proc has nothing to wait on
            await asyncio.sleep(0.005)
