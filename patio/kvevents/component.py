"""The KV-events component: the bridge's lifecycle, ``GET /v1/kv-events``, engine-health wiring.

Readiness is unaffected (routing works without prefix hints).  Off unless a Redis
host, the pod and the model are given; then it serves only ``/v1/kv-events`` with
the reason, and nothing of the bridge (sockets, hashlib) is imported.  On shutdown
(phase 1, while the listener still serves) the bridge stops and this pod's entries
are removed from Redis within the budget left after the drain.
"""

from typing import TYPE_CHECKING, Optional, Sequence

from patio.component import AppContext, Component
from patio.http.types import Request, Response, Route
from patio.kvevents.settings import KvEventsSettings

if TYPE_CHECKING:  # pragma: no cover
    from patio.engines.health import EngineHealth
    from patio.kvevents.bridge import Bridge


class KvEventsComponent(Component):
    name = "kv_events"

    def __init__(
        self,
        context: AppContext,
        settings: KvEventsSettings,
        health: Optional["EngineHealth"] = None,
    ) -> None:
        self.context = context
        self.settings = settings
        self.bridge: Optional["Bridge"] = None
        if not settings.enabled:
            context.logger.info("kv events to redis: off (%s)", settings.reason)
            return
        from patio.kvevents.bridge import Bridge  # only an enabled bridge loads sockets and hashlib

        self.bridge = Bridge(settings, context.registry)
        if health is not None:
            # Down: clear the pod now; up again: rebuild from the engine's replay buffer.
            health.subscribe(self.bridge.engine_health)

    def routes(self) -> Sequence[Route]:
        return [Route("GET", "/v1/kv-events", self.show, summary="KV-event bridge state", tag="kv-events")]

    async def show(self, request: Request) -> Response:
        if self.bridge is None:
            return Response.json({"enabled": False, "reason": self.settings.reason})
        return Response.json(self.bridge.snapshot())

    async def start(self) -> None:
        if self.bridge is not None:
            self.bridge.start()

    async def before_close(self) -> None:
        if self.bridge is None:
            return
        core = self.context.core
        budget = max(core.shutdown_timeout - core.drain_timeout - 1.0, 1.0)
        await self.context.run_blocking(self.bridge.shutdown, budget)
