"""Topology component: the registration thread, its readiness, ``/v1/topology``, metrics.

On shutdown (phase 1, while the listener still serves) readiness turns 503
first, then the heartbeat stops and the worker is removed from the router,
within the shutdown budget left after the drain.
"""

import logging
from typing import Optional, Sequence

from patio.component import AppContext, Component, ReadyCheck
from patio.engines.health import EngineHealth
from patio.http.types import Request, Response, Route
from patio.topology.heartbeat import Heartbeat
from patio.topology.router_client import RouterClient
from patio.topology.settings import TopologySettings

log = logging.getLogger("patio.topology")

HEARTBEAT_RESULTS = ("success", "error", "engine_unhealthy")
# A wake waits this long for the router to list the worker again (smg lets a removed worker
# drain for --drain-settle-secs, 5 s by default, before it can be registered anew).
REJOIN_BUDGET = 15.0


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
            "Registrations/membership checks sent to the router, by result.",
            ("result",),
        )
        for result in HEARTBEAT_RESULTS:
            beats.inc(result, amount=0.0)
        restarts = registry.counter(
            "patio_topology_router_restarts_total",
            "Router restarts detected (the router forgot this worker or lists it under a new id).",
        )
        auth = registry.counter(
            "patio_topology_router_auth_failures_total",
            "Router calls refused with 401/403 (SGL_ROUTER_API_KEY missing or wrong).",
        )
        self._info = registry.gauge(
            "patio_topology_router_info", "The router generation detected from its answers (1).", ("generation",)
        )
        self._generation = "unknown"
        self._info.set(1.0, self._generation)
        self.router = RouterClient(settings)

        def on_heartbeat(result: str) -> None:
            beats.inc(result)
            self._note_generation()

        self.heartbeat = Heartbeat(
            settings,
            self.router,
            engine_healthy,
            on_heartbeat=on_heartbeat,
            on_router_restart=lambda: restarts.inc(),
            on_auth_failure=lambda: auth.inc(),
        )
        registry.gauge(
            "patio_topology_registered",
            "1 while the router accepted or listed this worker at the last heartbeat.",
            func=lambda: 1.0 if self.heartbeat.registered else 0.0,
        )

    def _note_generation(self) -> None:
        name = self.router.generation_name
        if name != self._generation:
            self._info.remove(self._generation)
            self._generation = name
            self._info.set(1.0, name)

    def routes(self) -> Sequence[Route]:
        return [Route("GET", "/v1/topology", self.show, summary="Router registration state", tag="topology")]

    async def show(self, request: Request) -> Response:
        return Response.json(self.heartbeat.snapshot())

    async def start(self) -> None:
        self.heartbeat.start()

    async def ready(self) -> Optional[ReadyCheck]:
        beat, router = self.heartbeat, self.settings.router_url
        if beat.stopping:
            return ReadyCheck("topology", False, f"shutting down: leaving the router at {router}")
        strict = self.settings.readiness == "strict"
        ok = beat.registered if strict else beat.ever_registered
        if ok and beat.registered:
            who = beat.worker_id or beat.settings.worker_url
            return ReadyCheck("topology", True, f"registered with {router} ({self.router.generation_name}) as {who}")
        if ok:
            # first-registration mode: a router outage must not take every worker out of service.
            return ReadyCheck(
                "topology", True, f"registered earlier; the router at {router} is failing now: {beat.last_error}"
            )
        if beat.waiting_for_engine:
            return ReadyCheck("topology", False, "waiting for the engine before registering with the router")
        return ReadyCheck("topology", False, f"not registered with {router}: {beat.last_error}")

    async def leave(self) -> None:
        """The engine is about to sleep: the router lets go of the worker first (bounded)."""
        budget = 2 * self.settings.request_timeout + 1.0
        if not await self.context.run_engine(self.heartbeat.hold, budget):
            log.warning(
                "the router at %s may still list %s (removal not confirmed)",
                self.settings.router_url,
                self.settings.worker_url,
            )

    async def rejoin(self) -> None:
        """The engine woke: register the worker again at once, and wait (bounded) until listed."""
        budget = max(REJOIN_BUDGET, 2 * self.settings.request_timeout + 1.0)
        if not await self.context.run_engine(self.heartbeat.release, budget):
            log.warning(
                "the router at %s does not list %s yet; the heartbeat keeps trying",
                self.settings.router_url,
                self.settings.worker_url,
            )

    async def before_close(self) -> None:
        core = self.context.core
        # Readiness turns 503 first (the next probe sees it), then the router lets go of
        # the worker, then the listener drains: nothing new is routed here while it drains.
        self.heartbeat.stopping = True
        log.info("shutting down: readiness now 503; removing %s from the router", self.settings.worker_url)
        budget = max(core.shutdown_timeout - core.drain_timeout - 1.0, 1.0)
        await self.context.run_blocking(self.heartbeat.shutdown, budget)
