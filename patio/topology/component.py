"""Topology component: wires the registration thread, its readiness, its metrics and its API.

On shutdown (phase 1, while the listener still serves) readiness turns 503
first, then the heartbeat stops and the worker is removed from the router,
within the shutdown budget left after the drain.

``leave()`` and ``rejoin()`` are the seam for an engine that sleeps and wakes: the
lifecycle takes the worker out of the router before the engine sleeps (nothing is
routed to an engine that cannot serve) and puts it back after it woke.
"""

import logging
from typing import Optional, Sequence

from patio.component import AppContext, Component, ReadyCheck
from patio.engines.health import EngineHealth
from patio.http.types import Route
from patio.topology.api import TopologyApi
from patio.topology.heartbeat import Heartbeat
from patio.topology.router_client import RouterClient
from patio.topology.settings import TopologySettings

log = logging.getLogger("patio.topology")

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
        self.api = TopologyApi(self.heartbeat)

    def _note_generation(self) -> None:
        name = self.router.generation_name
        if name != self._generation:
            self._info.remove(self._generation)
            self._generation = name
            self._info.set(1.0, name)

    def routes(self) -> Sequence[Route]:
        return self.api.routes()

    async def start(self) -> None:
        self.heartbeat.start()

    async def ready(self) -> Optional[ReadyCheck]:
        beat, router = self.heartbeat, self.settings.router_url
        if beat.stopping:
            return ReadyCheck("topology", False, f"shutting down: leaving the router at {router}")
        strict = self.settings.readiness == "strict"
        if beat.left:
            # Taken out on purpose (the engine sleeps): strict readiness follows the router.
            return ReadyCheck("topology", not strict, f"left the router at {router} on request; rejoin pending")
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

    async def leave(self, budget: Optional[float] = None) -> bool:
        """Take this worker out of the router and keep it out (no heartbeat registers it again)
        until ``rejoin()``; call it before the engine sleeps.  True once the router let go;
        False when ``budget`` (default three router timeouts) is spent first: the router is
        down or hangs, and may still list the worker.  Idempotent."""
        return await self.context.run_engine(self.heartbeat.leave, budget)

    async def rejoin(self, budget: Optional[float] = None) -> bool:
        """Register again after ``leave()`` (the engine woke) and resume heartbeats.  True once
        the router accepted the worker again; False when ``budget`` (default three router
        timeouts) is spent first (heartbeats go on trying on their backoff; smg refuses the
        POST while it still drains the registration ``leave()`` removed, --drain-settle-secs,
        5 s by default), or Patio is shutting down."""
        return await self.context.run_engine(self.heartbeat.rejoin, budget)

    async def before_close(self) -> None:
        core = self.context.core
        # Readiness turns 503 first (the next probe sees it), then the router lets go of
        # the worker, then the listener drains: nothing new is routed here while it drains.
        self.heartbeat.stopping = True
        log.info("shutting down: readiness now 503; removing %s from the router", self.settings.worker_url)
        budget = max(core.shutdown_timeout - core.drain_timeout - 1.0, 1.0)
        await self.context.run_blocking(self.heartbeat.shutdown, budget)
