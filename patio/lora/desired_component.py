"""Declarative adapters and residency metrics, beside the LoRA manager.

Residency metrics are always on (they describe every adapter Patio knows);
the adapters file's sync runs only with ``--adapters-file``.  In resolver-dir
mode its downloads go through the artifacts layer (the shared download pool)
into the resolver dir's staging area.
"""

import dataclasses
from typing import TYPE_CHECKING, Optional

from patio.artifacts.adapters import AdapterArtifacts
from patio.component import AppContext, Component, ReadyCheck
from patio.engines.health import EngineHealth
from patio.lora.manager import LoraManager
from patio.lora.readiness import adapters_check, engine_models
from patio.lora.residency import ResidencyMetrics
from patio.lora.settings import LoraSettings

if TYPE_CHECKING:  # pragma: no cover
    from patio.lora.desired_sync import DesiredSync


class DesiredComponent(Component):
    name = "lora-desired"

    def __init__(
        self,
        context: AppContext,
        manager: LoraManager,
        settings: LoraSettings,
        artifacts: AdapterArtifacts,
        health: EngineHealth,
    ) -> None:
        self.context, self.manager, self.health = context, manager, health
        self.staging: Optional[AdapterArtifacts] = None
        self.sync: Optional["DesiredSync"] = None
        if settings.adapters_file:
            # Off by default: the file's parser, its sync loop and the resolver dir load only with a file.
            from patio.lora import resolver_dir
            from patio.lora.desired_sync import DesiredSync

            if settings.resolver_dir:
                # The same downloader, pointed at DIR/.patio-staging: a copy appears in vLLM's sight whole.
                staged = dataclasses.replace(
                    artifacts.settings, adapter_dir=resolver_dir.staging_dir(settings.resolver_dir)
                )
                self.staging = AdapterArtifacts(context, staged, artifacts.downloads)
            self.sync = DesiredSync(context, manager, settings, self.staging)
        self.residency = ResidencyMetrics(manager, context.registry, self.sync)
        if self.sync is not None:
            # The engine back (or known up for the first time): failed adapters get fresh attempts.
            health.subscribe(self.sync.on_engine_health)

    async def ready(self) -> Optional[ReadyCheck]:
        """The adapters the file marks ``required`` are loaded (``patio.lora.readiness``)."""
        sync = self.sync
        if sync is None:
            return None
        seen = await engine_models(self.health, self.manager, self.context.core.ready_timeout)
        return adapters_check(seen, self.manager, sync.required(), sync.file_state != "not read yet")

    async def start(self) -> None:
        if self.sync is not None:
            self.sync.start()

    async def stop(self) -> None:
        if self.sync is not None:
            await self.sync.stop()
        if self.staging is not None:
            await self.staging.stop()
