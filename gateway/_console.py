"""The mesh console: a read-only page and its JSON API under ``/console`` on the region's ``metrics:`` address.

The page (``gateway/console/``: one HTML file, one script, one stylesheet, no framework, nothing
fetched from elsewhere) draws the mesh map, explains routes, previews an edited mesh file, lists
dead letters and finds an event in every region. It reads what the gateway already knows and
writes nothing: no endpoint reloads, publishes or stores.

Auth is Admin's: with client tokens in the mesh file, every ``/console/api/`` call needs an admin
client's ``Authorization: Bearer`` header (the page asks for the token and keeps it in the tab's
sessionStorage; the static files hold no data and are served to anyone). A mesh with
``security.ca`` and no tokens lets Admin callers in by their certificate, which this plain-HTTP
port cannot check: there the API refuses every call and says to add an admin token.

The map is assembled here, server-side: this gateway asks every region's gateway for
``Admin.Status`` over the same channel it replicates on (with ``security.ca``, its own region
certificate), passing the caller's token on. A browser cannot speak gRPC, and peers' metrics
ports need not be reachable from an operator's desk; each gateway already reaches its peers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import hashlib
import json
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs

import grpc

from meshgate._routing_diff import diff_routing
from meshgate.brokers import BrokerError, StartAt
from meshgate.config import ConfigError, load_config_bytes
from meshgate.gateway._auth import AUTHORIZATION, AuthError
from meshgate.replicator import DLQ_TOPIC_PREFIX
from meshgate.router import validate_topic
from meshgate.v1 import admin_pb2, admin_pb2_grpc

if TYPE_CHECKING:
    from meshgate.brokers import Broker
    from meshgate.config import MeshConfig, RegionConfig
    from meshgate.gateway._auth import Authenticator
    from meshgate.router import Router

__all__ = ["CONSOLE_PATH", "Console", "ConsoleReply", "latest_dead_letters"]

CONSOLE_PATH = "/console"
_API = f"{CONSOLE_PATH}/api/"
# A peer that does not answer Status within this shows as unreachable; the page polls again.
_PEER_TIMEOUT = 3.0
# The longest a request thread waits for the gateway's event loop (Locate asks every region).
_LOOP_TIMEOUT = 40.0
# The loader refuses larger mesh files anyway; a body past this is not read at all.
_MAX_BODY = 4 * 1024 * 1024
_STATIC = {
    "": ("index.html", "text/html; charset=utf-8"),
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
}
_SECURITY_HEADERS = [
    # Nothing from elsewhere, no inline script, no framing (a cluster has no internet anyway).
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]
_GET_APIS = ("mesh", "explain", "locate", "deadletters")
_LINK_STATE_PREFIX = "LINK_STATE_"
_DEFAULT_LOOKBACK = datetime.timedelta(hours=1)
# Dead letters: those of the last day, at most this many read; the read ends when the log has
# nothing more for this long (a broker read has no end of its own: it waits for new events).
_DLQ_LOOKBACK = datetime.timedelta(days=1)
_DLQ_MAX_SCANNED = 50_000
_DLQ_IDLE = 0.5

T = TypeVar("T")
_StartResponse = Callable[..., Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsoleReply:
    status: int
    body: bytes
    content_type: str = "application/json"


class _Refused(Exception):
    """A request answered with an HTTP error and a message a person can act on."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(status: int, value: object) -> ConsoleReply:
    return ConsoleReply(status=status, body=json.dumps(value).encode())


def _state_name(state: int) -> str:
    return admin_pb2.LinkState.Name(state).removeprefix(_LINK_STATE_PREFIX).lower()  # type: ignore[arg-type]


def _link_json(origin: str, link: admin_pb2.LinkStatus) -> dict[str, object]:
    out: dict[str, object] = {
        "origin": origin,
        "destination": link.destination,
        "state": _state_name(link.state),
        "lag_events": link.lag_events,
        "lag_seconds": round(link.lag_seconds, 3),
        "forwarded": link.forwarded,
        "dead_lettered": link.dead_lettered,
        "last_error": link.last_error,
        "reported": True,
    }
    if link.HasField("last_error_time"):
        out["last_error_time"] = link.last_error_time.ToDatetime(tzinfo=datetime.UTC).isoformat()
    return out


def _file_lines(config: MeshConfig) -> list[str] | None:
    """The lines of the file ``config`` was loaded from, if it still holds what was loaded."""
    try:
        data = Path(config.source).read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != config.sha256:
        return None  # edited since: its lines would not be the rules' lines
    return data.decode("utf-8-sig", errors="replace").splitlines()


def _secret_variables(config: MeshConfig) -> set[str]:
    """The environment variables that hold the running file's secrets."""
    security = config.security
    names = {token.variable for token in security.tokens if token.variable}
    if security.replication_secret_variable:
        names.add(security.replication_secret_variable)
    return names


class Console:
    """The console's API of one gateway; ``app`` answers the WSGI requests of ``/console`` paths.

    Requests run in the HTTP server's threads; what reads the gateway's state runs on its event
    loop (``loop``), awaited from the thread.
    """

    def __init__(
        self,
        *,
        region: str,
        loop: asyncio.AbstractEventLoop,
        auth: Callable[[], Authenticator],
        routing: Callable[[], tuple[MeshConfig, Router]],
        link_statuses: Callable[[], list[admin_pb2.LinkStatus]],
        peer_channel: Callable[[str, str], grpc.aio.Channel],
        locate: Callable[..., Awaitable[admin_pb2.LocateResponse]],
        dead_letters: Callable[[], Awaitable[list[dict[str, object]]]] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._region = region
        self._loop = loop
        self._auth = auth
        self._routing = routing
        self._link_statuses = link_statuses
        self._peer_channel = peer_channel
        self._locate = locate
        self._dead_letters = dead_letters
        self._environ = os.environ if environ is None else environ
        folder = resources.files("meshgate.gateway") / "console"
        self._static = {path: (folder / name).read_bytes() for path, (name, _) in _STATIC.items()}

    # --- WSGI --------------------------------------------------------------------------------

    def app(self, environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        reply = self._static_reply(path, method) if not path.startswith(_API) else self._api_reply(environ, path)
        headers = [
            ("Content-Type", reply.content_type),
            ("Content-Length", str(len(reply.body))),
            ("Cache-Control", "no-store"),
            *_SECURITY_HEADERS,
        ]
        if reply.status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="meshgate"'))
        start_response(f"{reply.status} {_REASONS.get(reply.status, 'Error')}", headers)
        return [b""] if method == "HEAD" else [reply.body]

    def _static_reply(self, path: str, method: str) -> ConsoleReply:
        found = _STATIC.get(path.removeprefix(CONSOLE_PATH))
        if found is None:
            return ConsoleReply(status=404, body=b"not found\n", content_type="text/plain; charset=utf-8")
        if method not in ("GET", "HEAD"):
            return ConsoleReply(status=405, body=b"GET only\n", content_type="text/plain; charset=utf-8")
        return ConsoleReply(status=200, body=self._static[path.removeprefix(CONSOLE_PATH)], content_type=found[1])

    def _api_reply(self, environ: dict[str, Any], path: str) -> ConsoleReply:
        try:
            return self._api(environ, path)
        except _Refused as exc:
            return _json(exc.status, {"error": exc.message})

    def _api(self, environ: dict[str, Any], path: str) -> ConsoleReply:
        name = path.removeprefix(_API)
        method = environ.get("REQUEST_METHOD", "GET")
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        metadata = self._authorize(environ)
        if name == "diff":
            if method != "POST":
                raise _Refused(405, "POST the edited mesh file as the request body")
            return _json(200, self.diff(_read_body(environ), name=query.get("name") or "edited.yaml"))
        if name not in _GET_APIS:
            raise _Refused(404, f"no console API {path} (there are: diff, {', '.join(_GET_APIS)})")
        if method not in ("GET", "HEAD"):
            raise _Refused(405, f"{path} is read with GET")
        if name == "mesh":
            return _json(200, self._on_loop(self.mesh(metadata)))
        if name == "explain":
            return _json(200, self._on_loop(self._explain_async(query.get("topic", ""), query.get("from", ""))))
        if name == "locate":
            return _json(200, self._on_loop(self.locate(query.get("id", ""), metadata=metadata)))
        return _json(200, self._on_loop(self.dead_letters()))

    def _authorize(self, environ: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        """The metadata to pass to peers; _Refused unless the caller may call Admin."""
        header = environ.get("HTTP_AUTHORIZATION")
        metadata = ((AUTHORIZATION, header),) if header else ()
        peer = f"ipv4:{environ.get('REMOTE_ADDR', 'unknown')}:{environ.get('REMOTE_PORT', 0)}"
        auth = self._auth()
        try:
            client = auth.identify(metadata, peer)
        except AuthError as exc:
            raise _Refused(401, exc.message.replace("gRPC metadata", "the HTTP header")) from None
        if not client.admin:
            raise _Refused(403, client.admin_refusal("Status"))
        config, _ = self._routing()
        if not client.authenticated and config.security.ca is not None:
            raise _Refused(
                403,
                "this mesh lets Admin callers in by a client certificate of the mesh CA, which the plain-HTTP"
                " metrics port cannot check: add an admin client to security.tokens of the mesh file"
                " (admin: true) and give the console its token",
            )
        return metadata

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop is closed: the gateway has stopped
            coro.close()
            raise _Refused(503, "the gateway is stopping") from None
        try:
            return future.result(_LOOP_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise _Refused(504, f"the gateway did not answer within {_LOOP_TIMEOUT:g} s") from None
        except concurrent.futures.CancelledError:  # cancelled by the loop's shutdown
            raise _Refused(503, "the gateway is stopping") from None

    # --- the API (also called directly by tests) ----------------------------------------------

    async def mesh(self, metadata: tuple[tuple[str, str], ...] = ()) -> dict[str, object]:
        """Every region and every link, as each region's gateway reports them now."""
        config, router = self._routing()
        answers = await asyncio.gather(*(self._status_of(r, metadata) for r in config.regions))
        regions: list[dict[str, object]] = []
        links: list[dict[str, object]] = []
        for region, (status, error) in zip(config.regions, answers, strict=True):
            regions.append(
                {
                    "name": region.name,
                    "kind": str(region.kind.value),
                    "gateway": region.gateway or "",
                    "metrics": region.metrics or "",
                    "reachable": status is not None,
                    "error": error,
                    "config_sha256": status.config_sha256 if status is not None else "",
                    "inflight_events": status.inflight_events if status is not None else 0,
                    "here": region.name == self._region,
                }
            )
            if status is not None:
                links.extend(_link_json(region.name, link) for link in status.links)
        reported = {(str(link["origin"]), str(link["destination"])) for link in links}
        # A region that did not answer still has the links its rules make: shown, state unknown.
        links.extend(
            {"origin": o, "destination": d, "state": "unknown", "reported": False}
            for o, d in sorted(router.links() - reported)
        )
        return {
            "region": self._region,
            "config": {"source": config.source, "sha256": config.sha256},
            "regions": regions,
            "links": links,
            "time": datetime.datetime.now(datetime.UTC).isoformat(),
        }

    async def _status_of(
        self, region: RegionConfig, metadata: tuple[tuple[str, str], ...]
    ) -> tuple[admin_pb2.StatusResponse | None, str | None]:
        if region.name == self._region:
            config, _ = self._routing()
            here = admin_pb2.StatusResponse(region=self._region, config_sha256=config.sha256)
            here.links.extend(self._link_statuses())
            return here, None
        if not region.gateway:
            return None, f"region {region.name} has no gateway address in the mesh file"
        try:
            async with self._peer_channel(region.name, region.gateway) as channel:
                status = await admin_pb2_grpc.AdminStub(channel).Status(
                    admin_pb2.StatusRequest(), timeout=_PEER_TIMEOUT, metadata=metadata
                )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            return None, f"{code.name if code else 'UNKNOWN'} from {region.gateway}: {exc.details()}"
        return status, None

    async def _explain_async(self, topic: str, origin: str) -> dict[str, object]:
        return self.explain(topic, origin)

    def explain(self, topic: str, origin: str) -> dict[str, object]:
        """Admin.Explain, with each rule's line of the mesh file."""
        problem = validate_topic(topic)
        if problem is not None:
            raise _Refused(400, problem)
        config, router = self._routing()
        origin = origin or self._region
        if origin not in config.region_names:
            raise _Refused(400, f"origin {origin!r} is not in the mesh (regions: {', '.join(config.region_names)})")
        ex = router.explain(topic, origin)
        lines = _file_lines(config)
        return {
            "topic": ex.topic,
            "origin": ex.origin,
            "destinations": list(ex.destinations),
            "source": config.source,
            "rules": [
                {
                    "index": r.index,
                    "pattern": r.topic,
                    "regions": list(r.regions),
                    "line": r.line,
                    "text": lines[r.line - 1].strip() if lines is not None and 0 < r.line <= len(lines) else None,
                }
                for r in ex.rules
            ],
        }

    def diff(self, data: bytes, *, name: str = "edited.yaml") -> dict[str, object]:
        """``meshgate config diff`` of the file in force and ``data``: its errors, or what it changes."""
        current, _ = self._routing()
        # The running file's secrets stay out: a ${VAR} of one in the pasted text would show it
        # in an error message or a region name. Certificate files are the reload's to check.
        secret = _secret_variables(current)
        env = {k: v for k, v in self._environ.items() if k not in secret}
        name = os.path.basename(name)[:200] or "edited.yaml"
        try:
            edited = load_config_bytes(data, name, env=env, check_files=False, need_secrets=False)
        except ConfigError as exc:
            lines = data.decode("utf-8", errors="replace").splitlines()
            return {
                "valid": False,
                "errors": [
                    {
                        "file": e.file,
                        "line": e.line,
                        "column": e.column,
                        "message": e.message,
                        "text": str(e),
                        "source_line": lines[e.line - 1] if 0 < e.line <= len(lines) else None,
                    }
                    for e in exc.errors
                ],
            }
        return {
            "valid": True,
            "old": current.source,
            "new": name,
            "region_count": len(edited.regions),
            "rule_count": len(edited.routing),
            **diff_routing(current, edited).to_json(),
        }

    async def locate(
        self, event_id: str, *, since: datetime.datetime | None = None, metadata: tuple[tuple[str, str], ...] = ()
    ) -> dict[str, object]:
        """``meshgate trace``: per region, whether it holds the event and when it stored it."""
        if not event_id:
            raise _Refused(400, "id is required: the event id to look for")
        since = since or datetime.datetime.now(datetime.UTC) - _DEFAULT_LOOKBACK
        resp = await self._locate(
            admin_pb2.LocateRequest(id=event_id, all_regions=True), since=since, metadata=metadata
        )
        return {
            "id": event_id,
            "since": since.isoformat(),
            "locations": [
                {
                    "region": where.region,
                    "found": where.found,
                    "sequence": where.sequence,
                    "stored_time": where.stored_time.ToDatetime(tzinfo=datetime.UTC).isoformat()
                    if where.HasField("stored_time")
                    else None,
                    "origin": where.origin,
                    "topic": where.topic,
                    "route": list(where.route),
                    "error": where.error,
                }
                for where in resp.locations
            ],
        }

    async def dead_letters(self) -> dict[str, object]:
        if self._dead_letters is None:
            return {"region": self._region, "dead_letters": []}
        return {"region": self._region, "dead_letters": await self._dead_letters()}


async def latest_dead_letters(broker: Broker) -> list[dict[str, object]]:
    """The latest event of each ``meshgate/dlq/<destination>`` of the last day in ``broker``."""
    latest: dict[str, Any] = {}
    start = StartAt(time=datetime.datetime.now(datetime.UTC) - _DLQ_LOOKBACK)
    reader = broker.read(f"{DLQ_TOPIC_PREFIX}>", start=start, max_batch=512)
    scanned = 0
    try:
        while scanned < _DLQ_MAX_SCANNED:
            try:
                batch = await asyncio.wait_for(anext(reader), _DLQ_IDLE)
            except (TimeoutError, StopAsyncIteration):
                break
            scanned += len(batch)
            for ev in batch:
                latest[ev.topic] = ev
    except BrokerError as exc:
        raise _Refused(503, f"the region's log cannot be read: {exc}") from None
    finally:
        await reader.aclose()
    out: list[dict[str, object]] = []
    for topic in sorted(latest):
        ev = latest[topic]
        ext = ev.extensions
        try:
            stored = await broker.stored_time(ev.sequence, stream=ev.stream)
        except BrokerError:
            stored = None
        out.append(
            {
                "destination": ext.get("dlqdestination", topic.removeprefix(DLQ_TOPIC_PREFIX)),
                "topic": ext.get("dlqtopic", ""),
                "id": ext.get("dlqid", ev.id),
                "reason": ext.get("dlqreason", ""),
                "origin": ev.origin,
                "stored_time": stored.isoformat() if stored is not None else None,
            }
        )
    return out


def _read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise _Refused(400, "Content-Length is not a number") from None
    if length > _MAX_BODY:
        raise _Refused(413, f"the file is {length} bytes; the console reads at most {_MAX_BODY} bytes")
    if length <= 0:
        raise _Refused(400, "the request has no body: POST the edited mesh file")
    stream = environ["wsgi.input"]
    data: bytes = stream.read(length)
    return data


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
