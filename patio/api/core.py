"""Core routes: root, liveness, readiness, ``/metrics``, and the API docs.

Liveness means "this process serves".  Readiness means "the engine answers its
health endpoint and every enabled component is ready", with a 503 naming the
failed checks otherwise.  ``/metrics`` renders Patio's own families and hands
them to the engine-metrics source when one is configured.
"""

import asyncio
import json
import zlib
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

from patio import __version__
from patio.component import App, AppContext, Component, ReadyCheck
from patio.engines.health import EngineHealth
from patio.http.types import Request, Response, Route
from patio.metrics.model import Family, Sample
from patio.metrics.process import collect_process, uptime_since
from patio.metrics.write import CONTENT_TYPE as METRICS_CONTENT_TYPE
from patio.metrics.write import render

# Responses smaller than this are not worth compressing.
GZIP_MIN_BYTES = 1024

# Of the /ready deadline, the engine probe may use this share; the rest answers the other checks.
ENGINE_SHARE_OF_READY_DEADLINE = 0.8

_STATUS_SCHEMA = {"type": "object", "properties": {"status": {"type": "string"}}}


def gzip_compress(*parts: bytes, level: int = 5) -> bytes:
    """One gzip member (RFC 1952) of ``parts`` joined, via zlib (loaded anyway; the gzip module is
    not).  The parts are fed one by one, never concatenated first."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 16+15: gzip header and trailer
    out = [compressor.compress(part) for part in parts]
    out.append(compressor.flush())
    return b"".join(out)


def _accepts_gzip(request: Request) -> bool:
    """True when ``Accept-Encoding`` lists gzip (or ``*``) with a non-zero quality."""
    for part in (request.header("accept-encoding") or "").split(","):
        token, _, params = part.partition(";")
        if token.strip().lower() not in ("gzip", "*"):
            continue
        quality = params.strip()
        if quality.startswith("q="):
            try:
                return float(quality[2:]) > 0
            except ValueError:
                return False
        return True
    return False


class EngineMetricsSource(Protocol):
    """The seam for engine metrics in ``/metrics`` (the unified-metrics component fills it)."""

    async def exposition(self, request: Request) -> Tuple[Sequence[Family], Tuple[bytes, ...]]:
        """Patio's own families, collected once for this scrape on the event loop, and the
        engine's share of ``/metrics`` (UTF-8) written after them (shared: do not modify)."""


class CoreComponent(Component):
    name = "core"

    def __init__(
        self,
        context: AppContext,
        app: App,
        health: EngineHealth,
        engine_metrics: Optional[EngineMetricsSource],
    ) -> None:
        self.context = context
        self.app = app  # readiness asks every component; the API docs list every route
        self.health = health
        self.engine_metrics = engine_metrics
        core = context.core
        registry = context.registry
        registry.add_collector(self._build_info)
        registry.add_collector(collect_process)
        registry.gauge(
            "patio_engine_healthy",
            "1 if the engine's /health answered 200 at the last probe.",
            func=lambda: 1.0 if health.up else 0.0,
        )
        self._docs = core.enable_docs

    def _build_info(self) -> List[Family]:
        core = self.context.core
        labels = (
            ("version", __version__),
            ("engine", self.context.engine.name),
            ("engine_version", self.context.engine.version),
            ("pod", core.pod),
            ("model", core.model),
        )
        return [
            Family(
                "patio_build_info",
                "gauge",
                "Patio build and deployment information.",
                [Sample("patio_build_info", labels, 1.0)],
            )
        ]

    def routes(self) -> Sequence[Route]:
        routes = [
            Route("GET", "/", self.root, summary="Service banner: version, engine, uptime"),
            Route(
                "GET", "/health", self.live, summary="Liveness (alias)", tag="probes", response_schema=_STATUS_SCHEMA
            ),
            Route("GET", "/healthz", self.live, summary="Liveness", tag="probes", response_schema=_STATUS_SCHEMA),
            Route("GET", "/livez", self.live, summary="Liveness (alias)", tag="probes", response_schema=_STATUS_SCHEMA),
            Route(
                "GET",
                "/ready",
                self.ready_route,
                summary="Readiness: engine health and every component",
                tag="probes",
                errors=(503,),
            ),
            Route("GET", "/readyz", self.ready_route, summary="Readiness (alias)", tag="probes", errors=(503,)),
            Route(
                "GET",
                "/metrics",
                self.metrics,
                summary="Prometheus text 0.0.4: Patio's own metrics plus the engine's",
                tag="metrics",
                response_type="text/plain",
            ),
        ]
        if self._docs:
            routes.append(Route("GET", "/openapi.json", self.openapi, summary="This OpenAPI 3 document", tag="docs"))
            routes.append(
                Route("GET", "/docs", self.docs, summary="HTML API reference", tag="docs", response_type="text/html")
            )
        return routes

    async def start(self) -> None:
        self.health.start()

    async def stop(self) -> None:
        await self.health.stop()

    async def ready(self) -> Optional[ReadyCheck]:
        deadline = self.context.core.ready_timeout * ENGINE_SHARE_OF_READY_DEADLINE
        ok, detail = await self.health.check(deadline=deadline)
        return ReadyCheck("engine", ok, detail)

    async def _ready_checks(self) -> List[ReadyCheck]:
        """Every component's check, answered within ``--ready-timeout`` whatever they wait on."""
        if self.app.closing:
            return [ReadyCheck("shutdown", False, "shutting down: this pod takes no new work")]
        deadline = self.context.core.ready_timeout
        try:
            return await asyncio.wait_for(self.app.ready_checks(), timeout=deadline)
        except asyncio.TimeoutError:
            return [ReadyCheck("readiness", False, f"readiness checks did not finish within {deadline:g}s")]

    async def root(self, request: Request) -> Response:
        return Response.json(
            {
                "message": "Patio Server is running",
                "version": __version__,
                "engine": self.context.engine.name,
                "engine_version": self.context.engine.version,
                "uptime_seconds": round(uptime_since(self.context.started_at), 3),
            }
        )

    async def live(self, request: Request) -> Response:
        return Response.json({"status": "ok"})

    async def ready_route(self, request: Request) -> Response:
        checks = await self._ready_checks()
        body: Dict[str, Any] = {"checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks]}
        failed = [c for c in checks if not c.ok]
        if not failed:
            body["status"] = "ready"
            return Response.json(body)
        body.update(
            {
                "object": "error",
                "type": "not_ready",
                "message": "not ready: " + "; ".join(f"{c.name}: {c.detail}" for c in failed),
                "param": failed[0].name,
                "code": 503,
            }
        )
        return Response.json(body, status=503)

    async def metrics(self, request: Request) -> Response:
        # Patio's own families are collected once per scrape, on the event loop: gauge callbacks
        # read the components' state on the thread that changes it (issue 13, row 20).
        source = self.engine_metrics
        if source is not None:
            own, engine = await source.exposition(request)
        else:
            own, engine = self.context.registry.collect(), ()
        body = render(own).encode("utf-8")
        headers = []
        if len(body) + sum(map(len, engine)) >= GZIP_MIN_BYTES and _accepts_gzip(request):
            body, engine = await self.context.run_blocking(gzip_compress, body, *engine), ()
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Vary", "Accept-Encoding"))
        # The engine's share is one bytes object for every concurrent scrape: sent, never copied.
        return Response(status=200, body=body, content_type=METRICS_CONTENT_TYPE, headers=headers, shared_tail=engine)

    async def openapi(self, request: Request) -> Response:
        from patio.api.openapi import openapi_document  # built on request: nothing of it loads at start

        document = openapi_document(self.app.routes(), self.context.core.api_key is not None)
        return Response(body=json.dumps(document, indent=1).encode("utf-8"))

    async def docs(self, request: Request) -> Response:
        from patio.api.openapi import docs_html, openapi_document

        document = openapi_document(self.app.routes(), self.context.core.api_key is not None)
        return Response.text(docs_html(document), content_type="text/html; charset=utf-8")
