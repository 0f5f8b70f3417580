"""The LoRA component: routes, the manager, and its reconcile loop."""

from typing import Sequence

from patio.artifacts.adapters import AdapterArtifacts
from patio.component import AppContext, Component
from patio.engines.client import EngineCallRetry, EngineClient
from patio.engines.health import EngineHealth
from patio.http.types import Route
from patio.lora.api import LoraApi
from patio.lora.manager import LoraManager
from patio.lora.preloaded import PreloadedAdapters
from patio.lora.settings import LoraSettings


class LoraComponent(Component):
    name = "lora"

    def __init__(
        self, context: AppContext, settings: LoraSettings, health: EngineHealth, artifacts: AdapterArtifacts
    ) -> None:
        core = context.core
        spec = context.engine.spec  # the engine set, else the one identified (patio.engines.detect)
        retry = EngineCallRetry(attempts=settings.retry_attempts, deadline=settings.retry_deadline)
        client = EngineClient(spec, core.engine_endpoint, core.engine_api_key, retry)
        self.manager = LoraManager(context, settings, client, artifacts)
        self.api = LoraApi(self.manager, spec)
        # The engine coming back (a restart drops runtime-loaded adapters) wakes reconciliation.
        health.subscribe(self.manager.on_engine_health)
        # llama.cpp's adapters come with the engine: recorded, so they are listed and counted.
        self.preloaded = PreloadedAdapters(self.manager) if spec.static_lora and spec.adapters_path else None
        if self.preloaded is not None:
            health.subscribe(self.preloaded.on_engine_health)

    def routes(self) -> Sequence[Route]:
        return self.api.routes()

    async def start(self) -> None:
        self.manager.start()

    async def stop(self) -> None:
        if self.preloaded is not None:
            await self.preloaded.stop()
        await self.api.stop()
        await self.manager.stop()
