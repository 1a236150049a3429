"""``meshgate.v1.Gateway``: Publish, PublishStream and Subscribe."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from meshgate.brokers import AppendResult, BrokerError, StartAt, StorageFullError
from meshgate.gateway._auth import Client, authenticate
from meshgate.gateway._budget import InflightBudget
from meshgate.gateway._limits import SubscribeBudgetError
from meshgate.gateway._metrics import RefusalReason, broker_reason
from meshgate.observability import BatchTrace
from meshgate.router import validate_pattern, validate_topic
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc

if TYPE_CHECKING:
    from meshgate.brokers import Broker
    from meshgate.config import Limits
    from meshgate.gateway._admission import Admission
    from meshgate.gateway._auth import Authenticator
    from meshgate.gateway._limits import ClientRates, ClientStreams, SubscribeBuffers
    from meshgate.gateway._metrics import GatewayMetrics
    from meshgate.gateway._server import Gateway
    from meshgate.observability import Tracing

__all__ = ["GatewayService"]

log = logging.getLogger("meshgate.gateway")

_ACCEPTED = event_pb2.OUTCOME_ACCEPTED
_DUPLICATE = event_pb2.OUTCOME_DUPLICATE
_REJECTED = event_pb2.OUTCOME_REJECTED
_INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
_PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]
_RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
_STATUS_OF = {code.value[0]: code for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)}
# How long a unary Publish waits for room among the gateway's in-flight events.
_UNARY_ADMISSION_WAIT = 1.0
_DEFAULT_SUBSCRIBE_BATCH = 256
_MAX_SUBSCRIBE_BATCH = 10_000
# gRPC clients refuse messages over 4 MiB unless told otherwise: a Subscribe response stays
# under it, whatever max_batch a client asked for (one larger event still goes alone).
_MAX_SUBSCRIBE_RESPONSE_BYTES = 4 * 1024 * 1024 - 64 * 1024


def broker_code(error: BrokerError) -> int:
    """The gRPC status code (its number) of a write the broker did not store.

    A broker out of room is RESOURCE_EXHAUSTED (backpressure: retry later with the same id,
    once room is made), any other retriable failure UNAVAILABLE, a refusal for good
    INVALID_ARGUMENT.
    """
    if isinstance(error, StorageFullError):
        return _RESOURCE_EXHAUSTED
    return _UNAVAILABLE if error.retriable else _INVALID_ARGUMENT


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class _Admitted:
    """A batch after admission: the events to write with their routes, a slot per event."""

    __slots__ = ("events", "extended", "reasons", "routes", "slots")

    def __init__(
        self,
        events: list[event_pb2.Event],
        routes: list[tuple[str, ...]],
        slots: list[event_pb2.EventResult | None],
        reasons: list[RefusalReason],
        *,
        extended: bool = True,
    ) -> None:
        self.events = events
        self.routes = routes
        # None where the event is written; the refusal where admission refused it.
        self.slots = slots
        # The metric reason of each refusal among the slots, in their order.
        self.reasons = reasons
        # False when no event carries extensions: none has a traceparent of its own.
        self.extended = extended


class GatewayService(gateway_pb2_grpc.GatewayServicer):
    """The client calls of one region; ``admission``, ``auth``, ``limits`` and ``draining`` read the
    gateway's state in force (a reload swaps the first three, a shutdown sets the last)."""

    def __init__(
        self,
        *,
        region: str,
        broker: Broker,
        metrics: GatewayMetrics,
        tracing: Tracing,
        budget: InflightBudget,
        client_streams: ClientStreams,
        client_rates: ClientRates,
        subscriptions: SubscribeBuffers,
        admission: Callable[[], Admission],
        auth: Callable[[], Authenticator],
        limits: Callable[[], Limits],
        draining: Callable[[], bool],
    ) -> None:
        self._region = region
        self._broker = broker
        self._metrics = metrics
        self._tracing = tracing
        # The gateway's in-flight events, shared by every call.
        self._budget = budget
        self._client_streams = client_streams
        self._client_rates = client_rates
        self._subscriptions = subscriptions
        self._admission = admission
        self._auth = auth
        self._limits = limits
        self._draining = draining

    @classmethod
    def for_gateway(cls, gateway: Gateway) -> GatewayService:
        return cls(
            region=gateway.region,
            broker=gateway.broker,
            metrics=gateway.metrics,
            tracing=gateway.tracing,
            budget=gateway.budget,
            client_streams=gateway.client_streams,
            client_rates=gateway.client_rates,
            subscriptions=gateway.subscriptions,
            admission=lambda: gateway.admission,
            auth=lambda: gateway.auth,
            limits=lambda: gateway.limits,
            draining=lambda: gateway.draining,
        )

    # --- admission -------------------------------------------------------------------------

    def _admit(self, events: Sequence[event_pb2.Event], client: Client) -> _Admitted:
        """Checks and stamps a batch: the events to write, and a slot per event for its result."""
        admission = self._admission()
        admission.extended = False
        now = _now()
        accepted: list[event_pb2.Event] = []
        routes: list[tuple[str, ...]] = []
        results: list[event_pb2.EventResult | None] = []
        reasons: list[RefusalReason] = []
        for ev in events:
            # A topic outside the client's publish list is refused as such; a malformed one as invalid.
            if not client.may_publish(ev.topic) and validate_topic(ev.topic) is None:
                results.append(
                    event_pb2.EventResult(
                        id=ev.id, outcome=_REJECTED, code=_PERMISSION_DENIED, message=client.publish_refusal(ev.topic)
                    )
                )
                reasons.append("permission")
                continue
            admitted = admission.admit(ev, now)
            if isinstance(admitted, tuple):
                routes.append(admitted)
                accepted.append(ev)
                results.append(None)
            else:
                results.append(
                    event_pb2.EventResult(id=ev.id, outcome=_REJECTED, code=_INVALID_ARGUMENT, message=admitted.message)
                )
                reasons.append("too_large" if admitted.too_large else "invalid")
        return _Admitted(accepted, routes, results, reasons, extended=admission.extended)

    async def _write(
        self, admitted: _Admitted, out: gateway_pb2.PublishResponse, trace: BatchTrace | None = None
    ) -> gateway_pb2.PublishResponse:
        """Appends the admitted events and adds one result per event of the batch to ``out``."""
        events, results = admitted.events, admitted.slots
        metrics = self._metrics
        started = time.perf_counter()
        outcomes: Sequence[AppendResult | BrokerError]
        if trace is not None:
            # A publish span per sampled event, its context in the event's traceparent.
            trace.start(events, own_traceparents=admitted.extended)
        try:
            outcomes = await self._broker.append(events) if events else []
        except BrokerError as exc:
            # The adapter reports per event; a whole-batch failure is still an answer for each.
            outcomes = [exc] * len(events)
        except BaseException:
            if trace is not None:
                trace.abandon("the call ended before the broker answered")
            raise
        if trace is not None:
            trace.end(outcomes)
        metrics.publish_seconds.observe(time.perf_counter() - started)
        it = iter(zip(events, admitted.routes, outcomes, strict=True))
        reasons = iter(admitted.reasons)
        add = out.results.add
        # A stored event's result is a copy of one made per (outcome, route, stream), the id and
        # sequence set on it: setting a repeated field (the route) costs as much as the rest.
        stored: dict[tuple[bool, tuple[str, ...], str], event_pb2.EventResult] = {}
        # Counted here and added once per batch: a counter update takes a lock.
        accepted = duplicate = 0
        for slot in results:
            if slot is not None:
                metrics.rejected.inc()
                metrics.refuse(next(reasons))
                out.results.append(slot)
                continue
            ev, route, res = next(it)
            if isinstance(res, AppendResult):
                if res.duplicate:
                    duplicate += 1
                else:
                    accepted += 1
                shape = (res.duplicate, route, res.stream)
                template = stored.get(shape)
                if template is None:
                    outcome = _DUPLICATE if res.duplicate else _ACCEPTED
                    template = stored[shape] = event_pb2.EventResult(outcome=outcome, route=route, stream=res.stream)
                result = add()
                result.CopyFrom(template)
                result.id = ev.id
                result.sequence = res.sequence
            else:
                metrics.rejected.inc()
                metrics.refuse(broker_reason(res))
                code = broker_code(res)
                hint = "; retry with the same id" if res.retriable else ""
                add(id=ev.id, outcome=_REJECTED, code=code, message=f"{res}{hint}")
        if accepted:
            metrics.accepted.inc(accepted)
        if duplicate:
            metrics.duplicate.inc(duplicate)
        return out

    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any], events: int = 0) -> Client:
        metrics = self._metrics
        return await authenticate(self._auth(), context, on_refused=lambda: metrics.refuse("unauthenticated", events))

    async def _open_stream(self, context: grpc.aio.ServicerContext[Any, Any], client: Client) -> None:
        """Takes one of the client's stream slots, or ends the call RESOURCE_EXHAUSTED naming the limit."""
        refusal = self._client_streams.open(client.key, client.label)
        if refusal is not None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)

    async def _refuse_if_draining(self, context: grpc.aio.ServicerContext[Any, Any], events: int = 0) -> None:
        if self._draining():
            self._metrics.refuse("shutting_down", events)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"gateway of region {self._region} is shutting down; retry on another replica",
            )

    def _check_batch_size(self, n: int) -> str | None:
        limit = self._limits().max_batch_events
        if n > limit:
            return f"batch of {n} events exceeds max_batch_events of {limit}; split it"
        return None

    # --- RPCs ------------------------------------------------------------------------------

    async def Publish(
        self,
        request: gateway_pb2.PublishRequest,
        context: grpc.aio.ServicerContext[gateway_pb2.PublishRequest, gateway_pb2.PublishResponse],
    ) -> gateway_pb2.PublishResponse:
        n = len(request.events)
        client = await self._authenticate(context, n)
        await self._refuse_if_draining(context, n)
        tracing = self._tracing
        trace = tracing.batch(tracing.call_context(context.invocation_metadata())) if tracing.enabled else None
        if n == 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no events: set PublishRequest.events")
        size_problem = self._check_batch_size(n)
        if size_problem:
            self._metrics.refuse("too_large", n)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, size_problem)
        over_rate = self._client_rates.take(client.key, client.label, n)
        if over_rate:
            self._metrics.refuse("rate_limited", n)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, over_rate)
        admitted = self._admit(request.events, client)
        slots = admitted.slots
        if len(admitted.events) < n:
            # All or nothing: a unary batch with a bad event stores none of it.
            bad = [f"events[{i}]: {r.message}" for i, r in enumerate(slots) if r is not None]
            prefix = "" if n == 1 else f"{len(bad)} of {n} events refused, nothing stored: "
            self._metrics.rejected.inc(n)
            refused = [r for r in slots if r is not None]
            reasons = admitted.reasons
            for reason in reasons:
                self._metrics.refuse(reason)
            # The good events of the batch are refused with it, for the first bad event's reason.
            self._metrics.refuse(reasons[0], n - len(reasons))
            # A batch that reaches outside the client's allow-list is refused as such, whatever else is wrong.
            code = (
                grpc.StatusCode.PERMISSION_DENIED
                if any(r.code == _PERMISSION_DENIED for r in refused)
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            await context.abort(code, prefix + "; ".join(bad[:10]))
        budget = self._budget
        try:
            await asyncio.wait_for(budget.acquire(n), _UNARY_ADMISSION_WAIT)
        except TimeoutError:
            self._metrics.refuse("backpressure", n)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"gateway has {budget.used} events in flight, max_inflight_events is {budget.limit};"
                " retry with backoff",
            )
        response = gateway_pb2.PublishResponse(batch_id=request.batch_id)
        try:
            await self._write(admitted, response, trace)
        finally:
            budget.release(n)
        failed = [r for r in response.results if r.outcome == _REJECTED]
        if failed:
            first = failed[0]
            code = _STATUS_OF.get(first.code, grpc.StatusCode.INVALID_ARGUMENT)
            stored = n - len(failed)
            await context.abort(code, f"{len(failed)} of {n} events not stored ({stored} stored): {first.message}")
        return response

    async def PublishStream(
        self,
        request_iterator: AsyncIterator[gateway_pb2.PublishRequest],
        context: grpc.aio.ServicerContext[gateway_pb2.PublishRequest, gateway_pb2.PublishResponse],
    ) -> AsyncIterator[gateway_pb2.PublishResponse]:
        client = await self._authenticate(context)
        await self._refuse_if_draining(context)
        await self._open_stream(context, client)
        try:
            async for resp in self._publish_stream(request_iterator, context, client):
                yield resp
        finally:
            self._client_streams.close(client.key)

    async def _publish_stream(
        self,
        request_iterator: AsyncIterator[gateway_pb2.PublishRequest],
        context: grpc.aio.ServicerContext[gateway_pb2.PublishRequest, gateway_pb2.PublishResponse],
        client: Client,
    ) -> AsyncIterator[gateway_pb2.PublishResponse]:
        auth = self._auth()
        stream_budget = InflightBudget(self._limits().max_inflight_events_per_stream)
        tracing = self._tracing
        call_parent = tracing.call_context(context.invocation_metadata()) if tracing.enabled else None
        # Acks go out in request order; the queue holds one pending write per batch.
        pending: asyncio.Queue[asyncio.Future[gateway_pb2.PublishResponse] | None] = asyncio.Queue()

        async def write(req: gateway_pb2.PublishRequest, n: int, client: Client) -> gateway_pb2.PublishResponse:
            try:
                trace = tracing.batch(call_parent) if tracing.enabled else None
                return await self._write(
                    self._admit(req.events, client), gateway_pb2.PublishResponse(batch_id=req.batch_id), trace
                )
            finally:
                self._budget.release(n)
                stream_budget.release(n)

        refuse = self._refused_batch

        async def reader() -> None:
            nonlocal auth, client
            try:
                async for req in request_iterator:
                    n = len(req.events)
                    if self._auth() is not auth:
                        # A reload swapped the tokens: this call keeps only what its token still allows.
                        auth = self._auth()
                        current = auth.refresh(client)
                        if current is None:
                            self._metrics.refuse("unauthenticated", n)
                            await context.abort(grpc.StatusCode.UNAUTHENTICATED, client.revoked_refusal())
                        client = current
                    if self._draining():
                        msg = f"gateway of region {self._region} is shutting down; publish again to another replica"
                        await pending.put(refuse(req, _UNAVAILABLE, msg, "shutting_down"))
                        continue
                    problem = self._check_batch_size(n)
                    if problem:
                        await pending.put(refuse(req, _INVALID_ARGUMENT, problem, "too_large"))
                        continue
                    over_rate = self._client_rates.take(client.key, client.label, n)
                    if over_rate:
                        await pending.put(refuse(req, _RESOURCE_EXHAUSTED, over_rate, "rate_limited"))
                        continue
                    # Backpressure: while this stream or the gateway is full we stop reading, and
                    # gRPC flow control holds the producer.
                    await stream_budget.acquire(n)
                    await self._budget.acquire(n)
                    await pending.put(asyncio.ensure_future(write(req, n, client)))
            finally:
                await pending.put(None)

        reader_task = asyncio.create_task(reader())
        try:
            while (fut := await pending.get()) is not None:
                yield await fut
            await reader_task  # re-raises a failure of the request stream
        finally:
            if not reader_task.done():
                reader_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader_task
            # Writes already sent to the broker finish (and release their budget) on their own.
            while not pending.empty():
                rest = pending.get_nowait()
                if rest is not None and not rest.done():
                    await asyncio.shield(rest)

    def _refused_batch(
        self, req: gateway_pb2.PublishRequest, code: int, message: str, reason: RefusalReason
    ) -> asyncio.Future[gateway_pb2.PublishResponse]:
        """The already answered ack of a batch refused whole (every event with ``code`` and ``message``)."""
        fut: asyncio.Future[gateway_pb2.PublishResponse] = asyncio.get_running_loop().create_future()
        fut.set_result(
            gateway_pb2.PublishResponse(
                batch_id=req.batch_id,
                results=[
                    event_pb2.EventResult(id=e.id, outcome=_REJECTED, code=code, message=message) for e in req.events
                ],
            )
        )
        self._metrics.rejected.inc(len(req.events))
        self._metrics.refuse(reason, len(req.events))
        return fut

    async def Subscribe(
        self,
        request: gateway_pb2.SubscribeRequest,
        context: grpc.aio.ServicerContext[gateway_pb2.SubscribeRequest, gateway_pb2.SubscribeResponse],
    ) -> AsyncIterator[gateway_pb2.SubscribeResponse]:
        client = await self._authenticate(context)
        await self._refuse_if_draining(context)
        if not request.pattern:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "pattern is required, e.g. 'orders/>'")
        problem = validate_pattern(request.pattern)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        if not client.may_subscribe(request.pattern):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, client.subscribe_refusal(request.pattern))
        which = request.WhichOneof("start")
        if which == "start_time":
            try:
                start = StartAt(time=request.start_time.ToDatetime(tzinfo=datetime.UTC))
            except ValueError as exc:  # out of protobuf's range: years 1 to 9999, nanos 0 to 999999999
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"start_time is not a valid time: {exc}")
        elif which == "start_sequence":
            if request.start_sequence < 1:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "start_sequence starts at 1")
            start = StartAt(sequence=request.start_sequence)
        else:
            start = StartAt(earliest=request.position == gateway_pb2.START_POSITION_EARLIEST)
        if request.max_batch > _MAX_SUBSCRIBE_BATCH:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"max_batch of {request.max_batch} exceeds {_MAX_SUBSCRIBE_BATCH}",
            )
        await self._open_stream(context, client)
        try:
            async for resp in self._subscribe(request, context, client, start):
                yield resp
        finally:
            self._client_streams.close(client.key)

    async def _subscribe(
        self,
        request: gateway_pb2.SubscribeRequest,
        context: grpc.aio.ServicerContext[gateway_pb2.SubscribeRequest, gateway_pb2.SubscribeResponse],
        client: Client,
        start: StartAt,
    ) -> AsyncIterator[gateway_pb2.SubscribeResponse]:
        auth = self._auth()
        # Bounded buffering: the broker's reader is an async generator resumed only once gRPC has
        # taken the previous batch (a yield here waits while the client's HTTP/2 window is full),
        # and it prefetches at most one batch. So a call holds at most two batches, and a batch
        # is at most half of subscribe_buffer_events: a slow reader pauses the broker read. In
        # bytes, the batch being sent is held three times over (the responses, their serialized
        # bytes, gRPC's copy of them) besides the prefetched one: a batch is at most a quarter of
        # subscribe_buffer_bytes (or one larger event). Each call reserves its byte bound from
        # the gateway's total first, so many slow readers cannot add up past it.
        limits = self._limits()
        max_batch = min(request.max_batch or _DEFAULT_SUBSCRIBE_BATCH, max(1, limits.subscribe_buffer_events // 2))
        buffer_bytes = limits.subscribe_buffer_bytes
        try:
            buffer = self._subscriptions.open(
                request.pattern, reserve_bytes=buffer_bytes, total_bytes=limits.subscribe_buffer_total_bytes
            )
        except SubscribeBudgetError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"gateway of region {self._region}: {exc}")
        try:
            reader = self._broker.read(
                request.pattern, start=start, max_batch=max_batch, max_bytes=max(1, buffer_bytes // 4)
            )
            async with contextlib.aclosing(reader):  # its broker consumer goes when the call ends
                async for batch in reader:
                    if not batch:
                        continue
                    if self._auth() is not auth:
                        auth = self._auth()
                        current = auth.refresh(client)
                        if current is None:
                            await context.abort(grpc.StatusCode.UNAUTHENTICATED, client.revoked_refusal())
                        client = current
                        if not client.may_subscribe(request.pattern):
                            await context.abort(
                                grpc.StatusCode.PERMISSION_DENIED, client.subscribe_refusal(request.pattern)
                            )
                    n = len(batch)
                    # Field tag and length prefix of a repeated message: at most 6 bytes here.
                    sizes = [e.ByteSize() + 6 for e in batch]
                    size = sum(sizes)
                    buffer.add(n, size)
                    try:
                        buffer.waiting = True
                        # The responses copy the events: the batch (which the reader's frame
                        # still references) is emptied, and each response dropped once sent.
                        responses = deque(
                            gateway_pb2.SubscribeResponse(events=part)
                            for part in _split_by_size(batch, sizes, _MAX_SUBSCRIBE_RESPONSE_BYTES)
                        )
                        batch.clear()
                        while responses:
                            yield responses.popleft()
                    finally:
                        buffer.waiting = False
                        buffer.drop(n, size)
                    buffer.sent += n
        except BrokerError as exc:
            # A refusal for good (e.g. a start sequence on a Kafka region) is the request's fault.
            code = grpc.StatusCode.UNAVAILABLE if exc.retriable else grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, f"reading region {self._region}'s log: {exc}")
        finally:
            self._subscriptions.close(buffer)


def _split_by_size(events: list[event_pb2.Event], sizes: list[int], limit: int) -> Iterator[list[event_pb2.Event]]:
    """``events`` (of encoded ``sizes``) in order, in runs of at most ``limit`` bytes (an event over it alone)."""
    start, size = 0, 0
    for i, n in enumerate(sizes):
        if size + n > limit and i > start:
            yield events[start:i]
            start, size = i, 0
        size += n
    yield events[start:]
