"""Topology component: the registration thread, its readiness, ``/v1/topology``, metrics.

On shutdown (phase 1, while the listener still serves) it stops the heartbeat
and unregisters, within the shutdown budget left after the drain.
"""

from typing import Optional, Sequence

from patio.app import AppContext, Component, ReadyCheck
from patio.engines.health import EngineHealth
from patio.http.types import Request, Response, Route
from patio.topology.heartbeat import Heartbeat
from patio.topology.settings import TopologySettings
from patio.topology.sglang_router import RouterClient

HEARTBEAT_RESULTS = ("success", "error", "engine_unhealthy")


class TopologyComponent(Component):
    name = "topology"

    def __init__(self, context: AppContext, settings: TopologySettings, health: EngineHealth) -> None:
        self.context = context
        self.settings = settings

        def engine_healthy() -> bool:
            # The shared watch's last answer (read from the heartbeat thread; a plain attribute).
            return health.up is True

        registry = context.registry
        beats = registry.counter(
            "patio_topology_heartbeats_total",
            "Registrations/heartbeats sent to the SGLang router, by result.",
            ("result",),
        )
        for result in HEARTBEAT_RESULTS:
            beats.inc(result, amount=0.0)
        restarts = registry.counter(
            "patio_topology_router_restarts_total", "Router restarts detected (the worker id changed)."
        )
        self.heartbeat = Heartbeat(
            settings,
            RouterClient(settings),
            engine_healthy,
            on_heartbeat=lambda result: beats.inc(result),
            on_router_restart=lambda: restarts.inc(),
        )
        registry.gauge(
            "patio_topology_registered",
            "1 while this worker is registered with the SGLang router.",
            func=lambda: 1.0 if self.heartbeat.registered else 0.0,
        )

    def routes(self) -> Sequence[Route]:
        return [Route("GET", "/v1/topology", self.show, summary="Router registration state", tag="topology")]

    async def show(self, request: Request) -> Response:
        return Response.json(self.heartbeat.snapshot())

    async def start(self) -> None:
        self.heartbeat.start()

    async def ready(self) -> Optional[ReadyCheck]:
        beat = self.heartbeat
        if beat.registered:
            return ReadyCheck("topology", True, f"registered with {self.settings.router_url} as {beat.worker_id}")
        if beat.waiting_for_engine:
            return ReadyCheck("topology", False, "waiting for the engine before registering with the router")
        return ReadyCheck("topology", False, f"not registered with {self.settings.router_url}: {beat.last_error}")

    async def before_close(self) -> None:
        core = self.context.settings.core
        budget = max(core.shutdown_timeout - core.drain_timeout - 1.0, 1.0)
        await self.context.run_blocking(self.heartbeat.shutdown, budget)
