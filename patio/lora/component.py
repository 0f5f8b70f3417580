"""The LoRA component: routes, the manager, and its reconcile loop."""

from typing import Sequence

from patio.app import AppContext, Component
from patio.artifacts.adapters import AdapterArtifacts
from patio.engines.client import SPECS, EngineCallRetry, EngineClient
from patio.engines.health import EngineHealth
from patio.http.types import Route
from patio.lora.api import LoraApi
from patio.lora.manager import LoraManager


class LoraComponent(Component):
    name = "lora"

    def __init__(self, context: AppContext, health: EngineHealth, artifacts: AdapterArtifacts) -> None:
        core, settings = context.settings.core, context.settings.lora
        spec = SPECS[core.engine]
        retry = EngineCallRetry(attempts=settings.retry_attempts, deadline=settings.retry_deadline)
        client = EngineClient(spec, core.engine_endpoint, core.engine_api_key, retry)
        self.manager = LoraManager(context, settings, client, artifacts)
        self.api = LoraApi(self.manager, spec)
        # The engine coming back (a restart drops runtime-loaded adapters) wakes reconciliation.
        health.subscribe(self.manager.on_engine_health)

    def routes(self) -> Sequence[Route]:
        return self.api.routes()

    async def start(self) -> None:
        self.manager.start()

    async def stop(self) -> None:
        await self.api.stop()
        await self.manager.stop()
