"""OTLP trace receivers for the tests: over gRPC (opentelemetry-proto's collector service) and
over HTTP (``POST <path>`` with a protobuf ``ExportTraceServiceRequest``, as the OTLP/HTTP
specification and a collector's ``otlp`` receiver take it).

No OTLP/HTTP receiver installs from the registries here without a large server of its own, so
the HTTP one is a plain ``http.server`` that does what such a receiver does with a request:
checks the method and content type, decodes the body with opentelemetry-proto and answers an
``ExportTraceServiceResponse``. A request it cannot decode is answered 400, as a receiver would.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["HttpReceiver", "ReceivedSpan", "Receiver"]


@dataclass(frozen=True)
class ReceivedSpan:
    span: trace_pb2.Span
    resource: dict[str, Any]

    @property
    def region(self) -> str:
        return str(self.resource.get("cloud.region"))

    @property
    def parent(self) -> bytes:
        return self.span.parent_span_id


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


def _spans(requests: list[trace_service_pb2.ExportTraceServiceRequest]) -> Iterator[ReceivedSpan]:
    for req in list(requests):
        for rs in req.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for span in ss.spans:
                    yield ReceivedSpan(span, resource)


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """OTLP/gRPC: add it to a ``grpc.aio`` server."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> Iterator[ReceivedSpan]:
        return _spans(self.requests)


class HttpReceiver:
    """OTLP/HTTP with protobuf bodies on 127.0.0.1 (a free port), in a daemon thread; a context manager.

    Every decoded request is kept with its path and headers (``paths``, ``content_types``,
    ``header_values``): the tests check where and how the exporter sent, not only what.
    """

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.received: list[tuple[str, dict[str, str]]] = []
        self.refused: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = trace_service_pb2.ExportTraceServiceRequest()
                problem = None
                content_type = self.headers.get("Content-Type")
                if content_type != "application/x-protobuf":
                    problem = f"content type {content_type!r}"
                else:
                    try:
                        request.ParseFromString(body)
                    except DecodeError as exc:
                        problem = str(exc)
                if problem is not None:
                    receiver.refused.append(problem)
                    self.send_response(400)
                    self.end_headers()
                    return
                receiver.requests.append(request)
                receiver.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: pytest shows stderr of failing tests only, and requests are kept anyway."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-http", daemon=True)

    def __enter__(self) -> HttpReceiver:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def spans(self) -> Iterator[ReceivedSpan]:
        return _spans(self.requests)

    @property
    def paths(self) -> set[str]:
        return {path for path, _ in self.received}

    @property
    def content_types(self) -> set[str]:
        return {headers.get("content-type", "") for _, headers in self.received}

    def header_values(self, name: str) -> set[str]:
        return {headers.get(name, "") for _, headers in self.received}
