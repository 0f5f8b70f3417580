"""The KV-events component: the bridges' lifecycle, ``GET /v1/kv-events``, engine-health wiring.

Readiness is unaffected (routing works without prefix hints; the state is in
``GET /v1/kv-events`` and ``patio_kv_events_state``).  Off unless a Redis host, the pod
and the model are given; then it serves only ``/v1/kv-events`` with the reason, and
nothing of the bridge (sockets, hashlib) is imported and no thread runs.  One bridge
(thread) per data-parallel rank: rank 0's from the start, the others once discovery
names them.  On shutdown (phase 1, while the listener still serves) the bridges stop
and this pod's entries are removed from Redis within the budget left after the drain.
"""

import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from patio.component import AppContext, Component
from patio.http.types import Request, Response, Route
from patio.kvevents.settings import KvEventsSettings

if TYPE_CHECKING:  # pragma: no cover
    from patio.engines.health import EngineHealth
    from patio.kvevents.bridge import Bridge
    from patio.kvevents.discovery import Source
    from patio.kvevents.metrics import BridgeMetrics


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
        self.ranks: Dict[int, "Bridge"] = {}  # past rank 0, once discovery names them
        self._ranks_lock = threading.Lock()
        self._started = False
        self._stopping = False
        if not settings.enabled:
            context.logger.info("kv events to redis: off (%s)", settings.reason)
            return
        from patio.kvevents.bridge import Bridge  # only an enabled bridge loads sockets and hashlib
        from patio.kvevents.metrics import BridgeMetrics

        self.metrics: "BridgeMetrics" = BridgeMetrics(context.registry)
        self.bridge = Bridge(settings, context.registry, metrics=self.metrics, on_sources=self._sources)
        self._health = health
        if health is not None:
            # Down: clear the pod now; up again: rebuild from the engine's replay buffer.
            health.subscribe(self.bridge.engine_health)

    def _sources(self, sources: List["Source"]) -> None:
        """Discovery (in rank 0's thread) named the engine's publishers: one bridge per further rank."""
        from patio.kvevents.bridge import Bridge

        with self._ranks_lock:
            if self._stopping:
                return
            for source in sources:
                if source.rank == 0 or source.rank in self.ranks:
                    continue
                bridge = Bridge(self.settings, self.context.registry, metrics=self.metrics, rank=source.rank)
                self.ranks[source.rank] = bridge
                if self._health is not None:
                    self._health.subscribe(bridge.engine_health)
                if self._started:
                    bridge.start()

    def bridges(self) -> List["Bridge"]:
        with self._ranks_lock:
            extra = [self.ranks[r] for r in sorted(self.ranks)]
        return ([self.bridge] if self.bridge is not None else []) + extra

    def routes(self) -> Sequence[Route]:
        return [Route("GET", "/v1/kv-events", self.show, summary="KV-event bridge state", tag="kv-events")]

    async def show(self, request: Request) -> Response:
        if self.bridge is None:
            return Response.json({"enabled": False, "reason": self.settings.reason})
        answer: Dict[str, Any] = self.bridge.snapshot()
        extra = self.bridges()[1:]
        if extra:
            answer["ranks"] = [b.snapshot() for b in extra]
        return Response.json(answer)

    async def start(self) -> None:
        with self._ranks_lock:
            self._started = True
            bridges = self.bridges_unlocked()
        for bridge in bridges:
            bridge.start()

    def bridges_unlocked(self) -> List["Bridge"]:
        return ([self.bridge] if self.bridge is not None else []) + [self.ranks[r] for r in sorted(self.ranks)]

    async def before_close(self) -> None:
        if self.bridge is None:
            return
        core = self.context.core
        budget = max(core.shutdown_timeout - core.drain_timeout - 1.0, 1.0)
        await self.context.run_blocking(self._shutdown, budget)

    def _shutdown(self, budget: float) -> bool:
        """Stop every stream (together), then clear each rank's entries within ``budget``."""
        deadline = time.monotonic() + budget
        with self._ranks_lock:
            self._stopping = True
            bridges = self.bridges_unlocked()
        if len(bridges) == 1:
            return bridges[0].shutdown(budget)
        for bridge in bridges:
            bridge.stop(0.0)  # every thread told at once, then each waited for
        for bridge in bridges:
            bridge.stop(max((deadline - time.monotonic()) / 2, 0.0))
        cleared = [bridge.clear_on_shutdown(deadline) for bridge in bridges]
        for bridge in bridges:
            bridge.release()
        return all(cleared)
