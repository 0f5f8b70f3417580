"""The contracts every capability is built against: a component, its context, the pools.

A *component* is one capability (probes, metrics, LoRA, topology, downloads).  It
contributes routes, readiness checks, metrics (on the shared registry) and takes part in
the lifecycle:

    start()         after the listener is bound, before serving
    before_close()  shutdown phase 1, while the listener still serves
                    (topology unregisters here, before the pod stops answering)
    stop()          shutdown phase 3, after in-flight requests drained

This module is a leaf: it imports no capability.  ``patio.app`` assembles the components
and is the only module that imports them all.
"""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Type, TypeVar

from patio.core_settings import CoreSettings
from patio.engines.detect import EngineKind
from patio.errors import PatioError
from patio.http.types import Route
from patio.metrics.registry import Registry

T = TypeVar("T")


@dataclass(frozen=True)
class PoolLimits:
    """Threads and queue depth of one purpose's pool (blocking calls never run on the loop)."""

    threads: int
    max_queued: int  # calls waiting for a thread; past it new work is refused (503), not queued forever


# Latency-critical work: engine health, the metrics scrape (single flight), state saves, gzip.
# Nothing long ever runs here, so probes and scrapes never wait behind a LoRA load or a download.
CRITICAL_POOL = PoolLimits(threads=8, max_queued=256)
# Engine calls that change state and may take long: LoRA load/unload (minutes on a cold disk).
ENGINE_POOL = PoolLimits(threads=16, max_queued=512)
# Engine reads: the /v1/models proxy and reconcile's adapter list; never behind a long load.
ENGINE_QUERY_POOL = PoolLimits(threads=8, max_queued=128)
# Artifact transfers (each job holds a thread for its whole download; files fan out below it).
DOWNLOAD_POOL = PoolLimits(threads=8, max_queued=256)


class Overloaded(PatioError):
    status = 503
    error_type = "overloaded"


class BoundedPool:
    """A thread pool whose waiting line has a named bound."""

    def __init__(self, name: str, limits: PoolLimits) -> None:
        self.name = name
        self.limits = limits
        self._executor = ThreadPoolExecutor(max_workers=limits.threads, thread_name_prefix=f"patio-{name}")
        self._outstanding = 0  # running + queued; touched only on the event loop

    @property
    def outstanding(self) -> int:
        return self._outstanding

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        if self._outstanding >= self.limits.threads + self.limits.max_queued:
            raise Overloaded(
                f"too much {self.name} work in flight ({self._outstanding} calls); try again later",
                param=None,
            )
        loop = asyncio.get_running_loop()
        self._outstanding += 1
        try:
            return await loop.run_in_executor(self._executor, lambda: func(*args))
        finally:
            self._outstanding -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False)


@dataclass
class Pools:
    critical: BoundedPool
    engine: BoundedPool
    engine_queries: BoundedPool
    downloads: BoundedPool

    @classmethod
    def create(cls) -> "Pools":
        return cls(
            critical=BoundedPool("critical", CRITICAL_POOL),
            engine=BoundedPool("engine", ENGINE_POOL),
            engine_queries=BoundedPool("engine-query", ENGINE_QUERY_POOL),
            downloads=BoundedPool("download", DOWNLOAD_POOL),
        )

    def shutdown(self) -> None:
        for pool in (self.critical, self.engine, self.engine_queries, self.downloads):
            pool.shutdown()


@dataclass(frozen=True)
class ReadyCheck:
    """One line of the readiness answer."""

    name: str
    ok: bool
    detail: str = ""


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


C = TypeVar("C", bound=Component)


@dataclass
class AppContext:
    """What every component receives: settings, the shared registry, the thread pools, and
    which engine is there (``engine``: the setting, else what the engine answered as).

    Anything more specific (the engine health watch, the LoRA manager, ...) is a
    constructor argument of the component that needs it.
    """

    core: CoreSettings
    registry: Registry
    pools: Pools
    started_at: float = field(default_factory=time.time)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("patio"))
    engine: EngineKind = field(init=False)

    def __post_init__(self) -> None:
        self.engine = EngineKind(self.core)

    async def run_blocking(self, func: Callable[..., T], *args: Any) -> T:
        """Short, latency-critical blocking work (health, scrape, state saves, gzip)."""
        return await self.pools.critical.run(func, *args)

    async def run_engine(self, func: Callable[..., T], *args: Any) -> T:
        """Engine calls that change state and may take long (LoRA load/unload)."""
        return await self.pools.engine.run(func, *args)

    async def run_engine_query(self, func: Callable[..., T], *args: Any) -> T:
        """Engine reads (/v1/models, reconcile's adapter list): never queued behind a load."""
        return await self.pools.engine_queries.run(func, *args)

    async def run_download(self, func: Callable[..., T], *args: Any) -> T:
        """Artifact transfers."""
        return await self.pools.downloads.run(func, *args)


@dataclass
class App:
    context: AppContext
    components: List[Component] = field(default_factory=list)
    closing: bool = False  # set at SIGTERM: readiness answers 503 from then on

    def routes(self) -> List[Route]:
        return [route for component in self.components for route in component.routes()]

    async def ready_checks(self) -> List[ReadyCheck]:
        results = await asyncio.gather(*(c.ready() for c in self.components))
        return [r for r in results if r is not None]

    def find(self, kind: Type[C]) -> C:
        """The one component of ``kind`` (tests and tools look components up by type)."""
        for component in self.components:
            if isinstance(component, kind):
                return component
        raise LookupError(f"no {kind.__name__} component is enabled")
