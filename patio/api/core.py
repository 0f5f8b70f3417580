"""Core routes: root, liveness, readiness and the API docs.

Liveness means "this process serves".  Readiness means "the engine answers its
health endpoint and every enabled component is ready", with a 503 naming the
failed checks otherwise.  (``/metrics`` is the metrics component's.)
"""

import asyncio
import json
from typing import Any, Dict, List, Optional, Sequence

from patio import __version__
from patio.component import App, AppContext, Component, ReadyCheck
from patio.engines.health import EngineHealth
from patio.http.types import Request, Response, Route
from patio.metrics.model import Family, Sample
from patio.metrics.process import ProcessCollector, uptime_since

# Of the /ready deadline, the engine probe may use this share; the rest answers the other checks.
ENGINE_SHARE_OF_READY_DEADLINE = 0.8

_STATUS_SCHEMA = {"type": "object", "properties": {"status": {"type": "string"}}}
# The liveness answer never changes: its body is built once, not per probe.
_ALIVE_BODY = b'{"status":"ok"}'


class CoreComponent(Component):
    name = "core"

    def __init__(
        self,
        context: AppContext,
        app: App,
        health: EngineHealth,
    ) -> None:
        self.context = context
        self.app = app  # readiness asks every component; the API docs list every route
        self.health = health
        core = context.core
        registry = context.registry
        registry.add_collector(self._build_info)
        registry.add_collector(ProcessCollector().collect)
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
        return Response(body=_ALIVE_BODY)

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

    async def openapi(self, request: Request) -> Response:
        from patio.api.openapi import openapi_document  # built on request: nothing of it loads at start

        document = openapi_document(self.app.routes(), self.context.core.api_key is not None)
        return Response(body=json.dumps(document, indent=1).encode("utf-8"))

    async def docs(self, request: Request) -> Response:
        from patio.api.openapi import docs_html, openapi_document

        document = openapi_document(self.app.routes(), self.context.core.api_key is not None)
        return Response.text(docs_html(document), content_type="text/html; charset=utf-8")
