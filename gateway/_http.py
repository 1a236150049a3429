"""The gateway's plain-HTTP endpoint on the region's ``metrics:`` address: Prometheus metrics, /healthz, /readyz,
and the mesh console under /console (gateway/_console.py).

Kubernetes' gRPC probes and Docker's HEALTHCHECK speak plaintext gRPC; with ``security.ca`` the gRPC
port takes only TLS with a client certificate of the mesh CA, so probes read these two paths instead.
An HTTP probe is made by the kubelet itself: no process is spawned per probe.

Every other path answers exactly what ``prometheus_client.start_http_server`` answered (its WSGI
app serves the metrics on any path, with content negotiation and gzip), so scrapers see no change.
"""

from __future__ import annotations

import enum
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

__all__ = ["HEALTHZ_PATH", "READYZ_PATH", "HttpEndpoint", "HttpEndpointState"]

HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"

# Probes and scrapes send their request at once; the kubelet's probe timeout is seconds too.
_REQUEST_TIMEOUT = 10.0
# A check answers None when all is well, else why not (the body of the 503).
Check = Callable[[], str | None]
_StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], _StartResponse], Iterable[bytes]]


class HttpEndpointState(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    STOPPED = "stopped"


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    # Worker threads are not joined at close (a probe stuck on a blocked event loop must not
    # hold up shutdown), and are not collected in a list that grows with every request.
    daemon_threads = True
    # socketserver's default backlog of 5 drops the connections of a burst (scrapes and probes of
    # several replicas, or a flood), and a dropped SYN is retried only after 1, 3, 7 s...
    request_queue_size = 128


class _QuietHandler(WSGIRequestHandler):
    # A connection that sends no complete request within this is closed: without it, every idle
    # socket opened to this port held a thread and a descriptor for ever.
    timeout = _REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        """Probes and scrapes every few seconds would flood the log."""

    def handle(self) -> None:
        try:
            super().handle()
        except TimeoutError:
            return  # no complete request within the timeout: the server closes the connection next


def _app(
    registry: CollectorRegistry, checks: Mapping[str, Check], mounts: Mapping[str, WsgiApp]
) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        for prefix, mounted in mounts.items():
            if path == prefix or path.startswith(f"{prefix}/"):
                return mounted(environ, start_response)
        check = checks.get(path)
        if check is None:
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        try:
            reason = check()
        except Exception as exc:  # noqa: BLE001 - a failing check answers 503 with why, not a dropped connection
            reason = f"the check failed: {exc!r}"
        body = b"ok\n" if reason is None else f"{reason}\n".encode()
        status = "200 OK" if reason is None else "503 Service Unavailable"
        start_response(
            status,
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    return app


class HttpEndpoint:
    """Metrics plus ``/healthz`` (``alive``) and ``/readyz`` (``ready``) on ``host:port``, in a daemon thread.

    The checks run in the server's worker threads, not in the event loop. ``start()`` and
    ``stop()`` are safe to call twice. Port 0 binds a free port (see ``port``). ``mounts`` maps a
    path prefix (``/console``) to the WSGI app that answers it and every path below it.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        registry: CollectorRegistry,
        alive: Check,
        ready: Check,
        mounts: Mapping[str, WsgiApp] | None = None,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._app = _app(registry, {HEALTHZ_PATH: alive, READYZ_PATH: ready}, mounts or {})
        self._server: _ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.state = HttpEndpointState.NEW
        self.port = 0

    def start(self) -> None:
        """Binds and serves; OSError when the address cannot be bound."""
        if self.state is not HttpEndpointState.NEW:
            return
        # As prometheus_client does: the address family of the host (an IPv6 address needs AF_INET6).
        info = socket.getaddrinfo(self._host, self._requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = info[0]
        server_class = type("_Server", (_ThreadingWSGIServer,), {"address_family": family})
        server: _ThreadingWSGIServer = make_server(
            str(sockaddr[0]), self._requested_port, self._app, server_class, handler_class=_QuietHandler
        )
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, name="meshgate-http", daemon=True)
        self._thread.start()
        self.state = HttpEndpointState.SERVING

    def stop(self) -> None:
        """Stops serving and closes the socket (blocks until the serving loop has ended)."""
        server, self._server = self._server, None
        self.state = HttpEndpointState.STOPPED
        if server is None:
            return
        server.shutdown()
        # shutdown() only ends the serving loop; the listening socket is closed here.
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
