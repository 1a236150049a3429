"""What the child processes Meshgate starts (nats-server, tansu) share: finding the binary, dying with us."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

__all__ = ["die_with_parent", "find_executable"]


def find_executable(name: str, env_var: str, candidates: Iterable[Path] = ()) -> Path | None:
    """``$env_var``, else the first of ``candidates`` that is a file, else ``name`` on PATH; None if none.

    Raises FileNotFoundError (naming the variable) when ``$env_var`` is set to something that is
    not a file: a wrong setting is reported, not passed over for another binary. ``candidates``
    is read only when the variable is not set (a generator may look lazily).
    """
    configured = os.environ.get(env_var)
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise FileNotFoundError(f"{env_var}={configured} is not a file")
        return path
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def die_with_parent() -> list[str]:
    """A command prefix asking Linux to SIGTERM the child when its parent dies (empty elsewhere).

    util-linux's setpriv sets the parent-death signal and execs the child in the same process.
    Not a preexec_fn: that forces fork() instead of vfork, and gRPC's fork handlers then run in
    the child and abort it while the gateway's gRPC threads are busy.
    """
    if not sys.platform.startswith("linux"):
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
