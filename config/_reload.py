"""Hot reload: a new mesh file is validated, then swapped in; an invalid one is refused and the running config stays.

A change is seen by polling the file (stat, then sha256 of its bytes), by SIGHUP or by
Admin.Reload; the last two call ``ConfigWatcher.reload()``. The route of an event is decided at
admission, so swapping the config never re-routes events already admitted.

That is also why a file must be whole when it is applied: a truncated file can be valid (its last
rules missing), and events admitted while it ran keep its routes for good. A file replaced by a
rename (a new inode: ``mv``, an editor's safe write, a Kubernetes ConfigMap's symlink swap) is
whole at once and applied at the first poll that sees it; a file written in place is applied
only once its bytes have stayed the same for ``settle`` seconds and at least one more poll.
SIGHUP and Admin.Reload apply what the file holds at once: the operator says it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
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
from meshgate.config._loader import load_config, load_config_bytes, read_config_file
from meshgate.config._model import MeshConfig

__all__ = ["DEFAULT_SETTLE_SECONDS", "ConfigWatcher", "ReloadOutcome", "ReloadResult", "WatcherState"]

logger = logging.getLogger("meshgate.config")

ReloadOutcome = Literal["applied", "refused", "unchanged"]
OnChange = Callable[[MeshConfig], Awaitable[None] | None]
OnError = Callable[["ReloadResult"], Awaitable[None] | None]

# A file modified this recently may be modified again within the filesystem's mtime granularity
# without its stat changing, so it is hashed on every poll until it settles.
_RACY_SECONDS = 2.0
DEFAULT_SETTLE_SECONDS = 0.5


class WatcherState(enum.Enum):
    NEW = "new"
    WATCHING = "watching"
    # A change written in place was seen; it is applied once it stops changing.
    SETTLING = "settling"
    STOPPED = "stopped"


@dataclass(slots=True, kw_only=True)
class _Pending:
    """Bytes seen changed in place, waiting to stay the same for the settle period."""

    sha256: str
    # Loop time of the poll that first read these bytes; a later poll that reads them again applies them.
    since: float


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
        settle: float = DEFAULT_SETTLE_SECONDS,
    ) -> None:
        """``initial`` is the running config (else ``start()`` loads the file); ``poll_interval`` 0 turns
        polling off (``reload()`` only); with ``region`` set, changes that region's gateway cannot apply
        live are refused (see ``check_compatible``) and only that region's certificate files are read.
        ``settle``: seconds a file written in place must stay the same (and one more poll) before a
        poll applies it; 0 applies every change as soon as a poll sees it."""
        if poll_interval < 0:
            raise ValueError(f"poll_interval must be 0 (no polling) or more seconds, got {poll_interval}")
        if settle < 0:
            raise ValueError(f"settle must be 0 (apply at once) or more seconds, got {settle}")
        self._settle = settle
        self._pending: _Pending | None = None
        # Why the file could not be read at the last poll: polls within the racy window re-read
        # it, and the same refusal is not counted again.
        self._read_error: tuple[str, ...] | None = None
        self.state = WatcherState.NEW
        self._path = Path(path)
        self._on_change = on_change
        self._on_error = on_error
        self._poll_interval = poll_interval
        self._region = region
        self._config = initial
        self.registry = registry if registry is not None else CollectorRegistry()
        # A gateway's watcher labels its region, as every meshgate_* family of its registry does;
        # one of no region (a tool's) has no region to label.
        reloads = Counter(
            "meshgate_config_reloads",
            "Mesh config reload attempts by result: applied, refused (invalid or needs a restart), unchanged.",
            ["region", "result"] if region is not None else ["result"],
            registry=self.registry,
        )
        by_region = {"region": region} if region is not None else {}
        self._reloads = {
            outcome: reloads.labels(**by_region, result=outcome) for outcome in ("applied", "refused", "unchanged")
        }
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
        self.state = WatcherState.WATCHING

    async def stop(self) -> None:
        """Stops polling; a reload in progress finishes first (a half-applied config helps no one). Safe twice."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        await task
        self._pending = None
        self.state = WatcherState.STOPPED

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
            if state == self._last_state and not racy and self._pending is None:
                continue
            # A new inode where the file was: renamed into place, so whole.
            replaced = state is not None and self._last_state is not None and state[:2] != self._last_state[:2]
            self._last_state = state
            try:
                await self._poll_once(replaced=replaced)
            except Exception:
                # The watcher outlives one bad attempt: the next change is tried again.
                logger.exception("reloading %s failed", self._path)

    async def _poll_once(self, *, replaced: bool) -> None:
        try:
            data = await asyncio.to_thread(read_config_file, self._path)
        except ConfigError as exc:
            # Missing, unreadable or too large: refused (and logged) as such, once per change,
            # renamed into place or not (a just-written file is polled again and again).
            self._settle_done()
            if exc.lines != self._read_error:
                self._read_error = exc.lines
                await self._attempt(force=False, data=None)
            return
        self._read_error = None
        if replaced or not self._settle:
            self._settle_done()
            await self._attempt(force=False, data=data)
            return
        sha = hashlib.sha256(data).hexdigest()
        if (self._config is not None and sha == self._config.sha256) or sha == self._last_sha:
            # Back to the bytes running or refused already: nothing to wait for.
            self._settle_done()
            return
        now = asyncio.get_running_loop().time()
        pending = self._pending
        if pending is None or pending.sha256 != sha:
            if pending is None:
                logger.info(
                    "%s changed in place; it is applied once it has not changed for %g s"
                    " (write a new file and rename it into place to apply it at once)",
                    self._path,
                    self._settle,
                )
            self._pending = _Pending(sha256=sha, since=now)
            self.state = WatcherState.SETTLING
            return
        if now - pending.since < self._settle:
            return
        self._settle_done()
        await self._attempt(force=False, data=data)

    def _settle_done(self) -> None:
        self._pending = None
        if self.state is WatcherState.SETTLING:
            self.state = WatcherState.WATCHING

    async def reload(self, *, force: bool = True) -> ReloadResult:
        """Reads, validates and applies the file now (SIGHUP, Admin.Reload).

        ``force`` re-validates a file whose bytes were refused before; the poller passes False.
        """
        return await self._attempt(force=force, data=None)

    async def _attempt(self, *, force: bool, data: bytes | None) -> ReloadResult:
        """Validates and applies ``data`` (None: the file as read now), then counts and reports."""
        async with self._lock:
            result = await self._reload(force=force, data=data)
        if result.outcome == "unchanged" and not force:
            # Polls that find the same bytes are not reload attempts.
            return result
        self._reloads[result.outcome].inc()
        if result.outcome == "refused" and self._on_error is not None:
            try:
                await _call(self._on_error, result)
            except Exception:
                logger.exception("the on_error callback of the config watcher of %s failed", self._path)
        return result

    async def _reload(self, *, force: bool, data: bytes | None) -> ReloadResult:
        source = str(self._path)
        if data is None:
            try:
                data = await asyncio.to_thread(read_config_file, self._path)
            except ConfigError as exc:
                return self._refuse(source, "", exc.lines)
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
