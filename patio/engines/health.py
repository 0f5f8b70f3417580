"""The engine's health, probed off the event loop and cached.

Readiness probes can arrive in storms, and SGLang's ``/health`` generates a
token, so one answer is reused for ``ready_cache_ttl`` seconds and concurrent
callers share one in-flight probe.  Flips between up and down are announced to
``AppContext.engine_health_listeners`` (LoRA reconciliation reacts to them).
"""

import asyncio
import time
from typing import TYPE_CHECKING, Optional, Tuple

from patio.engines.transport import http_request
from patio.errors import PatioError

if TYPE_CHECKING:  # pragma: no cover
    from patio.app import AppContext

HEALTH_PATH = "/health"  # the same on vLLM and SGLang
# A health answer is a status line and a tiny body; refuse anything bigger.
MAX_HEALTH_BODY = 64 * 1024


class EngineHealth:
    def __init__(self, context: "AppContext") -> None:
        core = context.settings.core
        self._context = context
        self._url = core.engine_endpoint + HEALTH_PATH
        self._timeout = core.engine_health_timeout
        self._ttl = core.ready_cache_ttl
        self._cached: Optional[Tuple[float, bool, str]] = None
        self._inflight: Optional[asyncio.Future[Tuple[bool, str]]] = None
        self.up: Optional[bool] = None  # last known state; None before the first probe

    async def check(self) -> Tuple[bool, str]:
        """``(healthy, detail)``, from cache when fresh."""
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1], cached[2]
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._probe())
            self._inflight.add_done_callback(lambda _: setattr(self, "_inflight", None))
        return await asyncio.shield(self._inflight)

    def _probe_blocking(self) -> Tuple[bool, str]:
        try:
            result = http_request("GET", self._url, timeout=self._timeout, max_bytes=MAX_HEALTH_BODY)
        except PatioError as exc:
            return False, exc.message
        if result.status == 200:
            return True, "engine healthy"
        return False, f"engine /health answered {result.status}"

    async def _probe(self) -> Tuple[bool, str]:
        ok, detail = await self._context.run_blocking(self._probe_blocking)
        self._cached = (time.monotonic(), ok, detail)
        previous, self.up = self.up, ok
        if previous is not None and previous != ok:
            self._context.logger.info("engine health changed: %s (%s)", "up" if ok else "down", detail)
            self._context.notify_engine_health(ok)
        return ok, detail
