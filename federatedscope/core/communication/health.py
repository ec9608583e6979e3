"""The server's gRPC health service, with a ceiling on Watch streams.

A load balancer or an orchestrator asks ``Check`` (one answer) or holds ``Watch`` open; the
service is not counted against the transport's sessions, so its Watch streams need their own cap.
"""
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from federatedscope.core.communication.limits import MAX_HEALTH_WATCHES


class CappedHealth(health.aio.HealthServicer):
    """gRPC's health service with a ceiling on Watch streams: each one is held open (a coroutine
    and a condition wait) for as long as the peer likes, so without a cap they grow with the
    attacker's patience. Over the cap a Watch is refused; Check stays free."""

    def __init__(self) -> None:
        super().__init__()
        self.watches = 0

    @classmethod
    def serve(cls, server) -> "CappedHealth":
        """A new service, added to ``server`` (a ``grpc.aio`` server not yet started)."""
        servicer = cls()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        return servicer

    async def serving(self, *services: str) -> None:
        """Report SERVING for the server as a whole ("") and for each of ``services``."""
        for name in ("",) + services:
            await self.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def Watch(self, request, context) -> None:  # noqa: N802 - gRPC's method name
        if self.watches >= MAX_HEALTH_WATCHES:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"at most {MAX_HEALTH_WATCHES} health Watch streams; use Check")
        self.watches += 1
        try:
            await super().Watch(request, context)
        finally:
            self.watches -= 1
