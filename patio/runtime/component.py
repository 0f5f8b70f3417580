"""The runtime component: the model-runtime routes, the supervisor, readiness while asleep.

Built by ``patio.app`` only with ``--enable-runtime``.  At start it adopts the engines a
previous Patio left running, then supervises; ``/ready`` answers 503 with the reason
``asleep`` while the engine beside Patio sleeps; shutdown stops every engine it runs
within the budget (SIGTERM in phase 1, SIGKILL before the end).
"""

import os
from typing import Mapping, Optional, Sequence

from patio.artifacts.jobs import Downloads
from patio.artifacts.settings import ArtifactSettings
from patio.component import AppContext, Component, ReadyCheck
from patio.engines.health import EngineHealth
from patio.http.types import Route
from patio.runtime.api import RuntimeApi
from patio.runtime.artifacts import ModelArtifacts
from patio.runtime.beside import Beside, Seams
from patio.runtime.control import CONTRACTS, EngineControl
from patio.runtime.launcher import Launcher
from patio.runtime.metrics import RuntimeMetrics
from patio.runtime.service import Runtime
from patio.runtime.settings import RuntimeSettings
from patio.runtime.store import ModelStore
from patio.runtime.supervisor import Supervisor


class RuntimeComponent(Component):
    name = "runtime"

    def __init__(
        self,
        context: AppContext,
        settings: RuntimeSettings,
        artifact_settings: ArtifactSettings,
        downloads: Downloads,
        health: EngineHealth,
        environ: Optional[Mapping[str, str]] = None,
    ) -> None:
        core = context.core
        control = EngineControl(CONTRACTS[core.engine], core.engine_endpoint, core.engine_api_key)
        self.beside = Beside(core, control, lambda: health.up)
        self.runtime = Runtime(
            context,
            settings,
            ModelStore(settings.registry_path, context.run_blocking),
            Launcher(settings, os.environ if environ is None else environ),
            ModelArtifacts(context, artifact_settings, downloads, settings.model_roots),
            lambda records: RuntimeMetrics(context.registry, records),
            beside=self.beside,
            engine_api_key=core.engine_api_key,
            patio_port=core.port,
        )
        self.supervisor = Supervisor(context, self.runtime)
        self.api = RuntimeApi(self.runtime)

    @property
    def seams(self) -> Seams:
        """Where ``patio.app`` plugs the router and LoRA in (see ``patio.runtime.beside``)."""
        return self.beside.seams

    def engine_asleep(self) -> bool:
        """The engine beside Patio sleeps, or is going to: nothing may be loaded into it."""
        return self.beside.asleep

    def routes(self) -> Sequence[Route]:
        return self.api.routes()

    async def start(self) -> None:
        await self.supervisor.adopt()
        self.supervisor.start()

    async def ready(self) -> Optional[ReadyCheck]:
        return self.beside.ready_check()

    async def before_close(self) -> None:
        await self.supervisor.begin_shutdown()

    async def stop(self) -> None:
        await self.supervisor.finish_shutdown()
