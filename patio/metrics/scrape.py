"""Fetch the engine's ``/metrics`` and read it: blocking, for a worker thread; one call at a time.

``EngineScraper.scrape`` returns an ``EngineScrape``, an immutable value: how the fetch went
(a failure is a bounded ``reason``, never an exception: ``/metrics`` always answers) and, when
it succeeded, the payload as read by ``pipeline.EngineText`` (matched against the last plan, or
parsed in full).  What happens next (accounting, Patio's own families, the assembly) is the
component's, in that order.
"""

import dataclasses
import time
import zlib
from typing import TYPE_CHECKING, NamedTuple, Optional

from patio.errors import EngineTimeout, EngineUnavailable, PatioError
from patio.http.client import HttpResult, KeepAliveClient, Origin
from patio.metrics.memory import RELEASE_AFTER_BYTES, prefer_mmap

if TYPE_CHECKING:  # pragma: no cover
    from patio.core_settings import CoreSettings
    from patio.metrics.pipeline import EngineText, Reading
    from patio.metrics.settings import MetricsSettings

# Ask for classic text: OpenMetrics from prometheus_client 0.23-0.26 declares
# `# TYPE sglang:x` but writes samples `sglang_x` (engines.md, "OpenMetrics trap").
ACCEPT = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"

# Bounded values of patio_engine_scrape_errors_total{reason}.
REASONS = ("unreachable", "timeout", "http_status", "oversize", "bad_encoding")


def metrics_endpoint(engine_endpoint: str, port: Optional[int]) -> str:
    """The base URL of the engine's metrics: its API's, on ``port`` when given (Triton serves
    ``/metrics`` on its own port, 8002 by default: ``patio.engines.triton``)."""
    if port is None:
        return engine_endpoint
    origin = Origin.parse(engine_endpoint)
    moved = dataclasses.replace(origin, port=port)
    return moved.url(moved.prefix)


class EngineScrape(NamedTuple):
    """One scrape of the engine: a failure (``error_reason``) or the payload as read."""

    duration: float  # seconds of the fetch and the read
    reading: "Optional[Reading]" = None
    error_reason: Optional[str] = None  # one of ``REASONS``
    error_message: str = ""

    @property
    def up(self) -> bool:
        return self.error_reason is None


class _Failed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _gunzip(data: bytes, limit: int) -> bytes:
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = decompressor.decompress(data, limit + 1)
    if len(out) > limit or decompressor.unconsumed_tail:
        raise ValueError(f"decompressed payload exceeds {limit} bytes")
    return out


class EngineScraper:
    """The engine's metrics endpoint, read over one keep-alive connection.  Not thread-safe:
    the component runs one scrape at a time."""

    def __init__(self, core: "CoreSettings", settings: "MetricsSettings") -> None:
        self._path = core.metrics_path
        self._endpoint = core.engine_endpoint
        self._client = KeepAliveClient(core.engine_endpoint)
        self._headers = {"Accept": ACCEPT, "Accept-Encoding": "gzip"}
        if core.engine_api_key:
            self._headers["Authorization"] = f"Bearer {core.engine_api_key}"
        self._limit = settings.max_payload_bytes
        self._timeout = settings.scrape_timeout

    def scrape(self, path: "EngineText", endpoint: Optional[str] = None) -> EngineScrape:
        """One fetch from ``endpoint`` (the engine's metrics base URL; default its API's), read
        with ``path`` (the text path of the engine Patio serves beside now)."""
        if endpoint is not None and endpoint != self._endpoint:  # another engine, another port
            self._client.close()
            self._endpoint, self._client = endpoint, KeepAliveClient(endpoint)
        started = time.monotonic()
        try:
            body = self._fetch()
        except _Failed as failure:
            return EngineScrape(time.monotonic() - started, error_reason=failure.reason, error_message=failure.message)
        reading = path.match(body)
        if reading is None:
            size = len(body)
            if size >= RELEASE_AFTER_BYTES:
                prefer_mmap()  # this scrape's large blocks go back to the OS when freed, not after a trim
            from patio.metrics.parse import decode_payload  # loaded with the text path (``path``)

            text = decode_payload(body)
            if not path.keeps_bytes(size):
                body = b""  # the text is parsed alone: a large payload's bytes are not kept beside it
            reading = path.parse(text, size, body)
        return EngineScrape(time.monotonic() - started, reading)

    def _fetch(self) -> bytes:
        try:
            result: HttpResult = self._client.get(
                self._path, self._headers, timeout=self._timeout, max_bytes=self._limit
            )
        except EngineTimeout as exc:
            raise _Failed("timeout", exc.message) from None
        except EngineUnavailable as exc:
            raise _Failed("unreachable", exc.message) from None
        except PatioError as exc:  # over the size limit
            raise _Failed("oversize", exc.message) from None
        if result.status != 200:
            raise _Failed("http_status", f"engine answered {result.status}")
        gzipped = (result.header("content-encoding") or "").lower() == "gzip"
        body = result.body
        del result  # the body is let go once decoded
        if not gzipped:
            return body
        try:
            return _gunzip(body, self._limit)
        except ValueError as exc:
            raise _Failed("oversize" if "exceeds" in str(exc) else "bad_encoding", str(exc)) from None
        except zlib.error as exc:
            raise _Failed("bad_encoding", f"bad gzip body: {exc}") from None
