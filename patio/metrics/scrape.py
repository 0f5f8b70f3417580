"""Fetch and parse the engine's ``/metrics``, off the event loop, one fetch at a time.

Concurrent ``/metrics`` requests share one engine fetch (single flight); with
``cache_ttl`` > 0 a recent result is reused.  Fetch and parse run together in a
worker thread (a 1 MB payload is CPU work that must not stall the loop).
Every failure becomes an outcome with a bounded ``reason`` label, never an
exception: ``/metrics`` always answers.
"""

import asyncio
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable, List, Optional, Sequence, Tuple

from patio.engines.transport import HttpResult, KeepAliveClient
from patio.errors import EngineTimeout, EngineUnavailable, PatioError
from patio.metrics.memory import RELEASE_AFTER_BYTES, prefer_mmap
from patio.metrics.model import Family
from patio.metrics.parse import DroppedLine, LineCache, decode_payload, parse

if TYPE_CHECKING:  # pragma: no cover
    from patio.component import AppContext
    from patio.metrics.settings import MetricsSettings

# Ask for classic text: OpenMetrics from prometheus_client 0.23-0.26 declares
# `# TYPE sglang:x` but writes samples `sglang_x` (its openmetrics/exposition.py escapes sample
# names only, with the underscores scheme).
ACCEPT = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"

# Bounded values of patio_engine_scrape_errors_total{reason}.
REASONS = ("unreachable", "timeout", "http_status", "oversize", "bad_encoding")


@dataclass
class ScrapeOutcome:
    families: List[Family] = field(default_factory=list)
    dropped: List[DroppedLine] = field(default_factory=list)
    type_conflicts: int = 0
    duplicate_series: int = 0
    error_reason: Optional[str] = None
    error_message: str = ""
    duration: float = 0.0
    finished_at: float = 0.0
    # Set by the scraper's ``finish`` step in the same worker thread (the engine's share of /metrics).
    rendered: Tuple[bytes, ...] = ()
    # The snapshot of Patio's own families taken on the loop for this fetch (handed to the
    # request that ran it, then dropped).
    own: Optional[Sequence[Family]] = None
    clashes: int = 0
    assembly_duplicates: int = 0
    utf8_names: int = 0
    payload_bytes: int = 0  # the engine's payload as parsed (decompressed)

    @property
    def up(self) -> bool:
        return self.error_reason is None


def _gunzip(data: bytes, limit: int) -> bytes:
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = decompressor.decompress(data, limit + 1)
    if len(out) > limit or decompressor.unconsumed_tail:
        raise ValueError(f"decompressed payload exceeds {limit} bytes")
    return out


class EngineScraper:
    def __init__(
        self,
        context: "AppContext",
        settings: "MetricsSettings",
        finish: Optional[Callable[[ScrapeOutcome], Awaitable[None]]] = None,
    ) -> None:
        core = context.core
        self._context = context
        self._settings = settings
        self._url = core.engine_endpoint + core.metrics_path
        self._path = core.metrics_path
        self._client = KeepAliveClient(core.engine_endpoint)
        self._api_key = core.engine_api_key
        self._inflight: "Optional[asyncio.Future[ScrapeOutcome]]" = None
        self._last: Optional[ScrapeOutcome] = None
        # Only one fetch runs at a time (single flight), so one cache serves every scrape.
        self._lines = LineCache()
        # Post-processing on the event loop after the fetch (accounting, the engine's share rendered
        # against a snapshot of Patio's own families), inside the single flight.
        self._finish = finish

    def fetch_blocking(self) -> ScrapeOutcome:
        started = time.monotonic()
        outcome = self._fetch_and_parse()
        outcome.duration = time.monotonic() - started
        return outcome

    async def _cycle(self) -> ScrapeOutcome:
        outcome = await self._context.run_blocking(self.fetch_blocking)
        if self._finish is not None:
            await self._finish(outcome)
        outcome.finished_at = time.monotonic()
        return outcome

    def _fetch_and_parse(self) -> ScrapeOutcome:
        limit = self._settings.max_payload_bytes
        headers = {"Accept": ACCEPT, "Accept-Encoding": "gzip"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            result: HttpResult = self._client.get(
                self._path, headers, timeout=self._settings.scrape_timeout, max_bytes=limit
            )
        except EngineTimeout as exc:
            return ScrapeOutcome(error_reason="timeout", error_message=exc.message)
        except EngineUnavailable as exc:
            return ScrapeOutcome(error_reason="unreachable", error_message=exc.message)
        except PatioError as exc:  # over the size limit
            return ScrapeOutcome(error_reason="oversize", error_message=exc.message)
        if result.status != 200:
            return ScrapeOutcome(error_reason="http_status", error_message=f"engine answered {result.status}")
        gzipped = (result.header("content-encoding") or "").lower() == "gzip"
        body = result.body
        del result  # the body is let go once decoded (below)
        if gzipped:
            try:
                body = _gunzip(body, limit)
            except ValueError as exc:
                reason = "oversize" if "exceeds" in str(exc) else "bad_encoding"
                return ScrapeOutcome(error_reason=reason, error_message=str(exc))
            except zlib.error as exc:
                return ScrapeOutcome(error_reason="bad_encoding", error_message=f"bad gzip body: {exc}")
        size = len(body)
        if size >= RELEASE_AFTER_BYTES:
            prefer_mmap()  # this scrape's large blocks go back to the OS when freed, not after a trim
        text = decode_payload(body)
        del body  # the text is parsed alone: the payload's bytes are not kept beside it
        parsed = parse(text, self._lines, verbatim=True)
        return ScrapeOutcome(
            families=parsed.families,
            dropped=parsed.dropped,
            type_conflicts=parsed.type_conflicts,
            duplicate_series=parsed.duplicate_series,
            payload_bytes=size,
        )

    async def scrape(self) -> Tuple[ScrapeOutcome, bool]:
        """The outcome, and whether it is fresh (this call's own fetch, to be accounted once)."""
        last = self._last
        ttl = self._settings.cache_ttl
        if last is not None and ttl > 0 and time.monotonic() - last.finished_at < ttl:
            return last, False
        if self._inflight is not None:
            return await asyncio.shield(self._inflight), False
        # The previous outcome is let go before the new one is built: two rendered payloads are
        # never held at once (answers still being written keep their own reference).
        self._last = None
        self._inflight = asyncio.ensure_future(self._cycle())
        try:
            outcome = await asyncio.shield(self._inflight)
        finally:
            self._inflight = None
        # With no reuse (``cache_ttl`` 0, the default) the render is not kept: it lives only as
        # long as the answers being written hold it.
        self._last = outcome if ttl > 0 else None
        return outcome, True
