"""Assembly: settings -> context -> components -> route table.

A *component* is one capability (probes, metrics, LoRA, topology, downloads).
It contributes routes, readiness checks, metrics (on the shared registry) and
takes part in the lifecycle:

    start()         after the listener is bound, before serving
    before_close()  shutdown phase 1, while the listener still serves
                    (topology unregisters here, before the pod stops answering)
    stop()          shutdown phase 3, after in-flight requests drained

Components are listed as data in ``COMPONENT_FACTORIES``; each factory takes the
``AppContext`` and returns a component, or ``None`` when disabled by settings.
"""

import asyncio
import importlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional, Protocol, Sequence, TypeVar

from patio.config import Settings
from patio.http.types import Request, Route
from patio.metrics.registry import Registry

T = TypeVar("T")

# Threads for blocking calls (engine, router, disk).  Long LoRA loads hold one each.
BLOCKING_WORKERS = 32

# (module, factory) rows, in start order.  Shutdown runs in reverse order.
COMPONENT_FACTORIES: Sequence[str] = (
    "patio.api.core:build",
    "patio.metrics.component:build",
    "patio.artifacts.component:build",
    "patio.lora.component:build",
    "patio.topology.component:build",
)


@dataclass(frozen=True)
class ReadyCheck:
    """One line of the readiness answer."""

    name: str
    ok: bool
    detail: str = ""


class EngineMetricsSource(Protocol):
    """The seam for engine metrics in ``/metrics`` (the unified-metrics component fills it)."""

    async def exposition(self, request: Request) -> bytes:
        """The whole ``/metrics`` body (UTF-8): Patio's own families plus whatever the engine adds."""


class Component:
    """Base class: override what the capability needs."""

    name = "component"

    def routes(self) -> Sequence[Route]:
        return ()

    async def start(self) -> None:
        return None

    async def before_close(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def ready(self) -> Optional[ReadyCheck]:
        """``None`` when this component has no say in readiness."""
        return None


@dataclass
class AppContext:
    """What components receive: settings, the shared registry, a way to run blocking work."""

    settings: Settings
    registry: Registry
    executor: ThreadPoolExecutor
    started_at: float = field(default_factory=time.time)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("patio"))
    engine_metrics: Optional[EngineMetricsSource] = None
    # Called with True/False whenever the engine's health flips (LoRA reconciliation listens).
    engine_health_listeners: List[Callable[[bool], None]] = field(default_factory=list)
    # Shared objects components publish for each other, by name (e.g. "engine_health", "lora").
    services: Dict[str, Any] = field(default_factory=dict)

    async def run_blocking(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` in the worker threads, never on the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: func(*args))

    def notify_engine_health(self, up: bool) -> None:
        for listener in list(self.engine_health_listeners):
            try:
                listener(up)
            except Exception:  # a listener's bug must not break the probe
                self.logger.exception("engine health listener failed")


@dataclass
class App:
    context: AppContext
    components: List[Component]

    def routes(self) -> List[Route]:
        return [route for component in self.components for route in component.routes()]

    async def ready_checks(self) -> List[ReadyCheck]:
        results = await asyncio.gather(*(c.ready() for c in self.components))
        return [r for r in results if r is not None]


def _load_factory(spec: str) -> Callable[[AppContext], Optional[Component]]:
    module_name, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory


def build_app(settings: Settings, registry: Optional[Registry] = None) -> App:
    context = AppContext(
        settings=settings,
        registry=registry or Registry(),
        executor=ThreadPoolExecutor(max_workers=BLOCKING_WORKERS, thread_name_prefix="patio-io"),
    )
    components: List[Component] = []
    for spec in COMPONENT_FACTORIES:
        component = _load_factory(spec)(context)
        if component is not None:
            components.append(component)
    app = App(context=context, components=components)
    context.services["app"] = app
    return app


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
