"""The LoRA component: routes, the manager, and its reconcile loop."""

from typing import TYPE_CHECKING, Callable, Optional, Sequence

from patio.artifacts.adapters import AdapterArtifacts
from patio.component import AppContext, Component, ReadyCheck
from patio.engines.client import EngineCallRetry, EngineClient
from patio.engines.health import EngineHealth
from patio.http.types import Route
from patio.lora.api import LoraApi
from patio.lora.manager import LoraManager
from patio.lora.readiness import engine_models, model_check
from patio.lora.reconcile import Reconciler
from patio.lora.settings import LoraSettings

if TYPE_CHECKING:  # pragma: no cover
    from patio.lora.preloaded import PreloadedAdapters


class LoraComponent(Component):
    name = "lora"

    def __init__(
        self,
        context: AppContext,
        settings: LoraSettings,
        health: EngineHealth,
        artifacts: AdapterArtifacts,
        engine_asleep: Optional[Callable[[], bool]] = None,
    ) -> None:
        """``engine_asleep``: True while the engine sleeps (its lifecycle says so): nothing is
        reloaded then (``patio.lora.reconcile``)."""
        core = context.core
        spec = context.engine.spec  # the engine set, else the one identified (patio.engines.detect)
        retry = EngineCallRetry(attempts=settings.retry_attempts, deadline=settings.retry_deadline)
        client = EngineClient(spec, core.engine_endpoint, core.engine_api_key, retry)
        self.manager = LoraManager(context, settings, client, artifacts)
        self.reconciler = Reconciler(self.manager, engine_asleep)
        self.api = LoraApi(self.manager, spec, artifacts=artifacts)
        self.context, self.health = context, health
        # The engine coming back (a restart drops runtime-loaded adapters) wakes reconciliation.
        health.subscribe(self.reconciler.on_engine_health)
        health.subscribe(self._on_engine_health)
        # llama.cpp's adapters come with the engine: recorded, so they are listed and counted.
        self.preloaded: "Optional[PreloadedAdapters]" = None
        if spec.static_lora and spec.adapters_path:
            from patio.lora.preloaded import PreloadedAdapters  # only for such an engine

            self.preloaded = PreloadedAdapters(self.manager)
            health.subscribe(self.preloaded.on_engine_health)

    def _on_engine_health(self, up: bool) -> None:
        if not up:
            self.manager.served.forget()  # a restarted engine lists its model anew before /ready says so

    async def ready(self) -> Optional[ReadyCheck]:
        """The engine lists its model (``patio.lora.readiness``)."""
        return model_check(await engine_models(self.health, self.manager, self.context.core.ready_timeout))

    def routes(self) -> Sequence[Route]:
        return self.api.routes()

    async def start(self) -> None:
        self.reconciler.start()

    async def stop(self) -> None:
        if self.preloaded is not None:
            await self.preloaded.stop()
        await self.api.stop()
        await self.manager.stop()
        await self.reconciler.stop()
