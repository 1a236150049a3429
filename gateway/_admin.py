"""``meshgate.v1.Admin``: Explain, Status, Reload, Locate; with client tokens on, for admin clients only."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from meshgate.brokers import BrokerError
from meshgate.gateway._auth import AUTHORIZATION, authenticate
from meshgate.router import validate_topic
from meshgate.v1 import admin_pb2, admin_pb2_grpc

if TYPE_CHECKING:
    from meshgate.brokers import Broker
    from meshgate.config import MeshConfig, ReloadResult
    from meshgate.gateway._auth import Authenticator
    from meshgate.gateway._budget import InflightBudget
    from meshgate.gateway._server import Gateway
    from meshgate.router import Router

__all__ = ["AdminService"]

_DEFAULT_LOOKBACK = datetime.timedelta(hours=1)
_PEER_TIMEOUT = 30.0


class AdminService(admin_pb2_grpc.AdminServicer):
    """The admin calls of one region; ``auth``, ``routing`` and ``config_loaded_at`` read the
    gateway's state in force (a reload swaps them), ``reload`` asks for one."""

    def __init__(
        self,
        *,
        region: str,
        broker: Broker,
        budget: InflightBudget,
        auth: Callable[[], Authenticator],
        routing: Callable[[], tuple[MeshConfig, Router]],
        config_loaded_at: Callable[[], datetime.datetime],
        link_statuses: Callable[[], list[admin_pb2.LinkStatus]],
        reload: Callable[[], Awaitable[ReloadResult]],
        peer_channel: Callable[[str, str], grpc.aio.Channel],
    ) -> None:
        self._region = region
        self._broker = broker
        self._budget = budget
        self._auth = auth
        self._routing = routing
        self._config_loaded_at = config_loaded_at
        self._link_statuses = link_statuses
        self._reload = reload
        # A channel to another region's gateway (with TLS on, checked to be that region's).
        self._peer_channel = peer_channel

    @classmethod
    def for_gateway(cls, gateway: Gateway) -> AdminService:
        return cls(
            region=gateway.region,
            broker=gateway.broker,
            budget=gateway.budget,
            auth=lambda: gateway.auth,
            routing=lambda: gateway.routing,
            config_loaded_at=lambda: gateway.config_loaded_at,
            link_statuses=gateway.link_statuses,
            reload=gateway.reload,
            peer_channel=gateway.peer_channel,
        )

    async def _require_admin(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
        client = await authenticate(self._auth(), context)
        if not client.admin:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, client.admin_refusal(method))

    async def Explain(
        self,
        request: admin_pb2.ExplainRequest,
        context: grpc.aio.ServicerContext[admin_pb2.ExplainRequest, admin_pb2.ExplainResponse],
    ) -> admin_pb2.ExplainResponse:
        await self._require_admin(context, "Explain")
        problem = validate_topic(request.topic)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        config, router = self._routing()
        origin = request.from_region or self._region
        if origin not in config.region_names:
            known = ", ".join(config.region_names)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"from_region {origin!r} is not in the mesh (regions: {known})"
            )
        ex = router.explain(request.topic, origin)
        return admin_pb2.ExplainResponse(
            topic=ex.topic,
            origin=ex.origin,
            destinations=ex.destinations,
            rules=[
                admin_pb2.MatchedRule(index=r.index, pattern=r.topic, regions=r.regions, line=r.line) for r in ex.rules
            ],
        )

    async def Status(
        self,
        request: admin_pb2.StatusRequest,
        context: grpc.aio.ServicerContext[admin_pb2.StatusRequest, admin_pb2.StatusResponse],
    ) -> admin_pb2.StatusResponse:
        await self._require_admin(context, "Status")
        config, _ = self._routing()
        resp = admin_pb2.StatusResponse(
            region=self._region,
            config_sha256=config.sha256,
            inflight_events=self._budget.used,
            broker_addresses=self._broker.addresses,
            broker_monitor_url=self._broker.monitor_url,
        )
        resp.config_loaded_time.FromDatetime(self._config_loaded_at())
        resp.links.extend(self._link_statuses())
        return resp

    async def Reload(
        self,
        request: admin_pb2.ReloadRequest,
        context: grpc.aio.ServicerContext[admin_pb2.ReloadRequest, admin_pb2.ReloadResponse],
    ) -> admin_pb2.ReloadResponse:
        await self._require_admin(context, "Reload")
        result = await self._reload()
        return admin_pb2.ReloadResponse(applied=result.applied, errors=result.errors, config_sha256=result.sha256)

    async def Locate(
        self,
        request: admin_pb2.LocateRequest,
        context: grpc.aio.ServicerContext[admin_pb2.LocateRequest, admin_pb2.LocateResponse],
    ) -> admin_pb2.LocateResponse:
        await self._require_admin(context, "Locate")
        if not request.id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "id is required: the event id to look for")
        if request.HasField("since"):
            try:
                since = request.since.ToDatetime(tzinfo=datetime.UTC)
            except ValueError as exc:  # out of protobuf's range: years 1 to 9999, nanos 0 to 999999999
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"since is not a valid time: {exc}")
        else:
            since = datetime.datetime.now(datetime.UTC) - _DEFAULT_LOOKBACK
        # The peers of one mesh file know the same clients: the caller's token is theirs to check.
        metadata = tuple((k, v) for k, v in context.invocation_metadata() or () if k.lower() == AUTHORIZATION)
        return await self.locate(request, since=since, metadata=metadata)

    async def locate(
        self,
        request: admin_pb2.LocateRequest,
        *,
        since: datetime.datetime,
        metadata: tuple[tuple[str, str | bytes], ...] = (),
    ) -> admin_pb2.LocateResponse:
        """Locate for a caller already let in (the console too); ``metadata`` goes to the peers."""
        local = await self._locate_here(request.id, since)
        if not request.all_regions:
            return admin_pb2.LocateResponse(locations=[local])
        config, _ = self._routing()
        peers = [r for r in config.regions if r.name != self._region]
        found = await asyncio.gather(*(self._locate_at(r.name, r.gateway, request, metadata) for r in peers))
        return admin_pb2.LocateResponse(locations=[local, *found])

    async def _locate_here(self, event_id: str, since: datetime.datetime) -> admin_pb2.Location:
        where = admin_pb2.Location(region=self._region)
        try:
            event = await self._broker.find_event(event_id, since=since)
            if event is None:
                return where
            stored = await self._broker.stored_time(event.sequence, stream=event.stream)
        except BrokerError as exc:
            where.error = f"region {self._region} cannot read its log: {exc}"
            return where
        where.found = True
        where.sequence = event.sequence
        where.origin = event.origin
        where.topic = event.topic
        where.route.extend(event.route)
        if stored is not None:
            where.stored_time.FromDatetime(stored)
        return where

    async def _locate_at(
        self,
        region: str,
        address: str | None,
        request: admin_pb2.LocateRequest,
        metadata: tuple[tuple[str, str | bytes], ...] = (),
    ) -> admin_pb2.Location:
        if address is None:
            return admin_pb2.Location(region=region, error=f"region {region} has no gateway address in the mesh file")
        ask = admin_pb2.LocateRequest(id=request.id, all_regions=False)
        if request.HasField("since"):
            ask.since.CopyFrom(request.since)
        try:
            async with self._peer_channel(region, address) as channel:
                resp = await admin_pb2_grpc.AdminStub(channel).Locate(ask, timeout=_PEER_TIMEOUT, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            return admin_pb2.Location(
                region=region, error=f"{code.name if code else 'UNKNOWN'} from {address}: {exc.details()}"
            )
        for where in resp.locations:
            if where.region == region:
                return where
        return admin_pb2.Location(region=region, error=f"the gateway at {address} did not answer for {region}")
