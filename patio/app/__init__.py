"""Assembly: settings -> context -> components, wired by hand, in start order.

``build_app`` constructs every enabled component explicitly and hands each one the
objects it depends on as constructor arguments (the engine health watch, the LoRA
manager, the adapter downloader): there is no service registry to look things up in by
name, and the start order is the order written there.  This module only assembles: the
contracts the components are built against live in ``patio.component``.

A capability that is off costs nothing: its component module is imported here only when its
settings turn it on (the topology heartbeat without a router URL is never loaded), and the
components that are always present import their optional parts on first use.  The modules a
default start loads are a budget (``tests/test_cost_imports.py``).
"""

import asyncio
import logging
from typing import Any, Awaitable, Callable, List, Optional, Sequence

from patio.api.core import CoreComponent
from patio.artifacts.component import ArtifactsComponent
from patio.component import App, AppContext, Component, Pools
from patio.config import Settings
from patio.engines.health import EngineHealth
from patio.engines.kind_check import EngineKindCheck
from patio.kvevents.component import KvEventsComponent
from patio.lora.component import LoraComponent
from patio.lora.desired_component import DesiredComponent
from patio.lora.manager import LOADED, LoraManager
from patio.metrics.component import MetricsComponent
from patio.metrics.registry import Registry
from patio.metrics.seams import LoraFacts


def build_app(
    settings: Settings,
    registry: Optional[Registry] = None,
    extra_components: Sequence[Callable[[AppContext], Component]] = (),
) -> App:
    """Construct every enabled component with its dependencies, in start order.

    Shutdown runs the components in reverse order.  ``extra_components`` lets a
    test add a component of its own after the built-in ones.
    """
    context = AppContext(core=settings.core, registry=registry or Registry(), pools=Pools.create())
    app = App(context=context)
    health = EngineHealth(settings.core, context.run_blocking, identify=context.engine.identify)
    health.subscribe(context.engine.on_health)
    metrics = MetricsComponent(
        context, settings.metrics, scrape_engine=settings.core.scrape_engine_metrics, engine_healthy=lambda: health.up
    )
    artifacts = ArtifactsComponent(context, settings.artifacts)
    runtime = None
    if settings.runtime.enabled:
        # Imported only when on: a Patio without the model-runtime API loads none of it.
        from patio.runtime.component import RuntimeComponent

        runtime = RuntimeComponent(context, settings.runtime, artifacts.settings, artifacts.downloads, health)
    # Nothing is reloaded into a sleeping engine (the runtime knows when it sleeps).
    asleep = runtime.engine_asleep if runtime is not None else None
    lora = LoraComponent(context, settings.lora, health, artifacts.adapters, engine_asleep=asleep)
    metrics.lora = served_adapters(lora.manager)  # the router view's LoRA state (patio.metrics.protocol)
    desired = DesiredComponent(context, lora.manager, settings.lora, artifacts.adapters, health)
    if desired.sync is not None:
        lora.api.desired_status = desired.sync.status  # GET /v1/lora_adapters shows the file's result
    components: List[Component] = [CoreComponent(context, app, health), EngineKindCheck(context), metrics]
    components += [artifacts, lora, desired]
    topology = None
    if settings.topology.enabled:
        from patio.topology.component import TopologyComponent  # the heartbeat, only with a router

        topology = TopologyComponent(context, settings.topology, health)
    if runtime is not None:
        # Before topology: a Patio that starts beside a sleeping engine holds it out of the router
        # from the first beat, and /ready names "asleep" first.
        runtime.seams.after_wake = lambda: lora.reconciler.on_engine_health(True)  # reconcile after the wake
        if topology is not None:  # the worker leaves the router before a sleep, rejoins after the wake
            runtime.seams.leave_router_in, runtime.seams.rejoin_router_in = topology.leave, topology.rejoin
        components.append(runtime)
    if topology is not None:
        components.append(topology)
    # Always present: off, it only answers /v1/kv-events with the reason (the bridge is not imported).
    components.append(KvEventsComponent(context, settings.kvevents, health))
    components += [factory(context) for factory in extra_components]
    app.components = components
    return app


def served_adapters(manager: LoraManager) -> Callable[[], LoraFacts]:
    """What the router view says a pod serves: the adapters Patio holds as loaded and the engine
    confirmed since it last started (a reload after a restart confirms them again)."""

    def facts() -> LoraFacts:
        records = list(manager.adapters.values())
        return LoraFacts(tuple(sorted([a.name for a in records if a.state == LOADED and a.engine_confirmed])))

    return facts


async def gather_bounded(awaitables: Sequence[Awaitable[Any]], timeout: float) -> None:
    """Await all, at most ``timeout`` seconds; exceptions are logged, never raised."""
    if not awaitables:
        return
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    done, pending = await asyncio.wait(tasks, timeout=max(timeout, 0.0))
    for task in pending:
        task.cancel()
    for task in done:
        exc = task.exception()
        if exc is not None:
            logging.getLogger("patio").error("shutdown step failed: %r", exc)
