"""The engine health watch: one prober of the engine's ``/health`` for the whole process.

Patio polls the engine on its own every ``engine_health_interval`` seconds, so
healing (LoRA reconcile after an engine restart), topology and the KV-event
bridge learn of an engine flip without any probe traffic.  Readiness reads the
same state: probe storms never reach the engine (SGLang's ``/health`` generates a
token), an answer is reused for ``ready_cache_ttl`` seconds, concurrent callers
share one in-flight probe, and a readiness probe never waits longer than its
deadline.

Subscribers are called on the event loop with the new state at every flip and
at the first known state.  ``up`` may be read from any thread.
"""

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, List, Optional, Tuple

from patio.core_settings import CoreSettings
from patio.engines.client import SPECS
from patio.errors import PatioError
from patio.http.client import http_request
from patio.tasks import cancel_and_wait

log = logging.getLogger("patio")

# A health answer is a status line and a tiny body; refuse anything bigger.
MAX_HEALTH_BODY = 64 * 1024

RunBlocking = Callable[..., Awaitable[Any]]
Subscriber = Callable[[bool], None]


class EngineHealth:
    def __init__(
        self, core: CoreSettings, run_blocking: RunBlocking, identify: Optional[Callable[[], None]] = None
    ) -> None:
        self._run_blocking = run_blocking
        # Asked (blocking, in the probe's thread) after each healthy answer, before anyone is told
        # the engine is up: which engine it is (patio.engines.detect.EngineKind.identify).
        self._identify = identify
        self.url = core.engine_endpoint + SPECS[core.engine].health_path  # Triton: /v2/health/ready
        self._timeout = core.engine_health_timeout
        self._ttl = core.ready_cache_ttl
        self.interval = core.engine_health_interval
        self._cached: Optional[Tuple[float, bool, str]] = None
        self._inflight: Optional["asyncio.Future[Tuple[bool, str]]"] = None
        self._subscribers: List[Subscriber] = []
        self._task: Optional["asyncio.Task[None]"] = None
        self.up: Optional[bool] = None  # last known state; None before the first probe
        self.detail = "engine not probed yet"
        self.flips = 0

    # -- subscribers ----------------------------------------------------------------------
    def subscribe(self, callback: Subscriber) -> None:
        """``callback(up)`` on the event loop at every flip and at the first known state."""
        self._subscribers.append(callback)

    # -- the watch --------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._watch())

    async def stop(self) -> None:
        await cancel_and_wait(self._task, self._inflight)
        self._task = self._inflight = None

    async def _watch(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # the watch must outlive any one probe's bug
                log.exception("engine health probe failed")
            await asyncio.sleep(self.interval)

    # -- probing -----------------------------------------------------------------------------
    async def check(self, deadline: Optional[float] = None) -> Tuple[bool, str]:
        """``(healthy, detail)``: from cache when fresh, else one shared probe.

        With ``deadline`` (seconds), a probe still running then is left to finish in
        the background and the last known state is answered instead.
        """
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1], cached[2]
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._probe())
            self._inflight.add_done_callback(self._probe_done)
        if deadline is None:
            return await asyncio.shield(self._inflight)
        try:
            return await asyncio.wait_for(asyncio.shield(self._inflight), timeout=deadline)
        except asyncio.TimeoutError:
            if self.up is None:
                return False, f"engine health probe of {self.url} still running after {deadline:g}s"
            return self.up, f"{self.detail} (last known; a probe has been running for over {deadline:g}s)"

    def _probe_done(self, future: "asyncio.Future[Tuple[bool, str]]") -> None:
        self._inflight = None
        if not future.cancelled():
            future.exception()  # retrieved: a failed probe is logged by its caller

    def _probe_blocking(self) -> Tuple[bool, str]:
        try:
            result = http_request("GET", self.url, timeout=self._timeout, max_bytes=MAX_HEALTH_BODY)
        except PatioError as exc:
            return False, exc.message
        if result.status == 200:
            if self._identify is not None:
                try:
                    self._identify()
                except Exception:  # which engine it is must never cost the health answer
                    log.exception("identifying the engine failed")
            return True, "engine healthy"
        return False, f"engine /health answered {result.status}"

    async def _probe(self) -> Tuple[bool, str]:
        ok, detail = await self._run_blocking(self._probe_blocking)
        self._cached = (time.monotonic(), ok, detail)
        previous = self.up
        self.up, self.detail = ok, detail
        if previous != ok:
            if previous is not None:
                self.flips += 1
                log.info("engine health changed: %s (%s)", "up" if ok else "down", detail)
            for callback in list(self._subscribers):
                try:
                    callback(ok)
                except Exception:  # a subscriber's bug must not break the watch
                    log.exception("engine health subscriber failed")
        return ok, detail
