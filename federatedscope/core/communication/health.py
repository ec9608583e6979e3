"""The server's gRPC health service, with a ceiling on Watch streams.

A load balancer or an orchestrator asks ``Check`` (one answer) or holds ``Watch`` open; the
service is not counted against the transport's sessions, so its Watch streams need their own cap.
"""
import grpc
from grpc_health.v1 import health

from federatedscope.core.communication.limits import MAX_HEALTH_WATCHES


class CappedHealth(health.aio.HealthServicer):
    """gRPC's health service with a ceiling on Watch streams: each one is held open (a coroutine
    and a condition wait) for as long as the peer likes, so without a cap they grow with the
    attacker's patience. Over the cap a Watch is refused; Check stays free."""

    def __init__(self) -> None:
        super().__init__()
        self.watches = 0

    async def Watch(self, request, context) -> None:  # noqa: N802 - gRPC's method name
        if self.watches >= MAX_HEALTH_WATCHES:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"at most {MAX_HEALTH_WATCHES} health Watch streams; use Check")
        self.watches += 1
        try:
            await super().Watch(request, context)
        finally:
            self.watches -= 1
