"""Hot reload: a new mesh file is validated, then swapped in; an invalid one is refused and the running config stays.

A change is seen by polling the file (stat, then sha256 of its bytes), by SIGHUP or by
Admin.Reload; the last two call ``ConfigWatcher.reload()``. The route of an event is decided at
admission, so swapping the config never re-routes events already admitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, Counter

from meshgate._lifecycle import StartStop
from meshgate.config._compat import check_compatible
from meshgate.config._errors import ConfigError
from meshgate.config._loader import load_config, load_config_bytes
from meshgate.config._model import MeshConfig

__all__ = ["ConfigWatcher", "ReloadOutcome", "ReloadResult"]

logger = logging.getLogger("meshgate.config")

ReloadOutcome = Literal["applied", "refused", "unchanged"]
OnChange = Callable[[MeshConfig], Awaitable[None] | None]
OnError = Callable[["ReloadResult"], Awaitable[None] | None]

# A file modified this recently may be modified again within the filesystem's mtime granularity
# without its stat changing, so it is hashed on every poll until it settles.
_RACY_SECONDS = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadResult:
    applied: bool
    # Why the file was refused, one FILE:LINE:COL line per problem; empty when applied or unchanged.
    errors: tuple[str, ...] = ()
    # Of the file's bytes as read for this attempt ("" when it could not be read).
    sha256: str = ""

    @property
    def outcome(self) -> ReloadOutcome:
        """The ``result`` label of ``meshgate_config_reloads_total``."""
        if self.applied:
            return "applied"
        return "refused" if self.errors else "unchanged"


async def _call(callback: Callable[..., Awaitable[None] | None], arg: object) -> None:
    result = callback(arg)
    if inspect.isawaitable(result):
        await result


def _file_state(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


class ConfigWatcher(StartStop):
    """Watches a mesh file and swaps valid changes in through ``on_change``.

    One watcher per metrics registry: it registers ``meshgate_config_reloads_total`` there.
    """

    def __init__(
        self,
        *,
        path: str | os.PathLike[str],
        on_change: OnChange,
        poll_interval: float = 1.0,
        on_error: OnError | None = None,
        initial: MeshConfig | None = None,
        region: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """``initial`` is the running config (else ``start()`` loads the file); ``poll_interval`` 0 turns
        polling off (``reload()`` only); with ``region`` set, changes that region's gateway cannot apply
        live are refused (see ``check_compatible``) and only that region's certificate files are read."""
        if poll_interval < 0:
            raise ValueError(f"poll_interval must be 0 (no polling) or more seconds, got {poll_interval}")
        self._path = Path(path)
        self._on_change = on_change
        self._on_error = on_error
        self._poll_interval = poll_interval
        self._region = region
        self._config = initial
        self.registry = registry if registry is not None else CollectorRegistry()
        self._reloads = Counter(
            "meshgate_config_reloads",
            "Mesh config reload attempts by result: applied, refused (invalid or needs a restart), unchanged.",
            ["result"],
            registry=self.registry,
        )
        for outcome in ("applied", "refused", "unchanged"):
            self._reloads.labels(result=outcome)
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Digest of the last bytes tried, applied or refused: a refused file is not retried until it changes.
        self._last_sha: str | None = initial.sha256 if initial is not None else None
        self._last_state: tuple[int, int, int, int] | None = None

    @property
    def config(self) -> MeshConfig:
        """The running config."""
        if self._config is None:
            raise RuntimeError("the watcher has no config yet; pass initial= or await start() first")
        return self._config

    @property
    def path(self) -> Path:
        return self._path

    async def start(self) -> None:
        """Loads the file unless an initial config was given (ConfigError if invalid), then polls. Safe twice."""
        if self._task is not None:
            return
        self._last_state = _file_state(self._path)
        if self._config is None:
            self._config = await asyncio.to_thread(functools.partial(load_config, self._path, region=self._region))
            self._last_sha = self._config.sha256
        self._stopping.clear()
        self._task = asyncio.create_task(self._poll(), name=f"meshgate-config-watch:{self._path}")

    async def stop(self) -> None:
        """Stops polling; a reload in progress finishes first (a half-applied config helps no one). Safe twice."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        await task

    async def _poll(self) -> None:
        if not self._poll_interval:
            await self._stopping.wait()
            return
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._poll_interval)
            if self._stopping.is_set():
                return
            state = _file_state(self._path)
            racy = state is not None and time.time() - state[3] / 1e9 < _RACY_SECONDS
            if state == self._last_state and not racy:
                continue
            self._last_state = state
            try:
                await self.reload(force=False)
            except Exception:
                # The watcher outlives one bad attempt: the next change is tried again.
                logger.exception("reloading %s failed", self._path)

    async def reload(self, *, force: bool = True) -> ReloadResult:
        """Reads, validates and applies the file now (SIGHUP, Admin.Reload).

        ``force`` re-validates a file whose bytes were refused before; the poller passes False.
        """
        async with self._lock:
            result = await self._reload(force=force)
        if result.outcome == "unchanged" and not force:
            # Polls that find the same bytes are not reload attempts.
            return result
        self._reloads.labels(result=result.outcome).inc()
        if result.outcome == "refused" and self._on_error is not None:
            try:
                await _call(self._on_error, result)
            except Exception:
                logger.exception("the on_error callback of the config watcher of %s failed", self._path)
        return result

    async def _reload(self, *, force: bool) -> ReloadResult:
        source = str(self._path)
        try:
            data = await asyncio.to_thread(self._path.read_bytes)
        except OSError as exc:
            message = f"{source}: cannot read the file: {exc.strerror or exc}"
            return self._refuse(source, "", (message,))
        sha = hashlib.sha256(data).hexdigest()
        running = self._config
        if running is not None and sha == running.sha256:
            self._last_sha = sha
            return ReloadResult(applied=False, sha256=sha)
        if sha == self._last_sha and not force:
            return ReloadResult(applied=False, sha256=sha)
        self._last_sha = sha
        try:
            new = await asyncio.to_thread(functools.partial(load_config_bytes, data, source, region=self._region))
        except ConfigError as exc:
            return self._refuse(source, sha, exc.lines)
        if running is not None and self._region is not None:
            reason = check_compatible(running, new, self._region)
            if reason is not None:
                return self._refuse(source, sha, (f"{source}: {reason}",))
        try:
            await _call(self._on_change, new)
        except Exception as exc:
            logger.exception("applying %s failed; the running config stays", source)
            return self._refuse(source, sha, (f"{source}: applying the new config failed: {exc}",), logged=True)
        self._config = new
        logger.info(
            "applied %s (sha256 %s, %d regions, %d rules)", source, sha[:12], len(new.regions), len(new.routing)
        )
        return ReloadResult(applied=True, sha256=sha)

    def _refuse(self, source: str, sha: str, errors: tuple[str, ...], *, logged: bool = False) -> ReloadResult:
        if not logged:
            logger.error(
                "refused %s: %d error(s); the running config stays:\n  %s", source, len(errors), "\n  ".join(errors)
            )
        return ReloadResult(applied=False, errors=errors, sha256=sha)
