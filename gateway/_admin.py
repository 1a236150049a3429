"""``meshgate.v1.Admin``: Explain, Status, Reload."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from meshgate.router import validate_topic
from meshgate.v1 import admin_pb2, admin_pb2_grpc

if TYPE_CHECKING:
    from meshgate.gateway._server import Gateway

__all__ = ["AdminService"]


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway

    async def Explain(
        self,
        request: admin_pb2.ExplainRequest,
        context: grpc.aio.ServicerContext[admin_pb2.ExplainRequest, admin_pb2.ExplainResponse],
    ) -> admin_pb2.ExplainResponse:
        problem = validate_topic(request.topic)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        config, router = self._gw.routing
        origin = request.from_region or self._gw.region
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
        config, _ = self._gw.routing
        resp = admin_pb2.StatusResponse(
            region=self._gw.region, config_sha256=config.sha256, inflight_events=self._gw.budget.used
        )
        resp.config_loaded_time.FromDatetime(self._gw.config_loaded_at)
        resp.links.extend(self._gw.link_statuses())
        return resp

    async def Reload(
        self,
        request: admin_pb2.ReloadRequest,
        context: grpc.aio.ServicerContext[admin_pb2.ReloadRequest, admin_pb2.ReloadResponse],
    ) -> admin_pb2.ReloadResponse:
        result = await self._gw.reload()
        return admin_pb2.ReloadResponse(applied=result.applied, errors=result.errors, config_sha256=result.sha256)
