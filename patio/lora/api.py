"""LoRA routes: the incumbents' paths and bodies over one manager, validated by one table.

Patio/RoleBasedGroup: ``/load_lora_adapter``, ``/unload_lora_adapter`` ``{lora_name, lora_path}``.
AIBrix controller (``pkg/controller/modeladapter/lora_client.go``, runtime-sidecar mode):
``/v1/lora_adapter/load`` ``{lora_name, artifact_url, credentials_secret?, additional_config?}``
with ``Authorization: Bearer <additional_config["api-key"]>``; ``/v1/lora_adapter/unload``
``{lora_name, cleanup_local: true}``; ``GET /v1/models``.
Kthena runtime (``python/kthena/runtime/app.py``): ``/v1/load_lora_adapter``
``{lora_name, source, output_dir, config?, max_workers?, async_download?}``,
``/v1/unload_lora_adapter``.

Every path accepts every body: ``LOAD_BODY`` / ``UNLOAD_BODY`` are the one table that
validates requests and renders their OpenAPI schemas.
"""

import asyncio
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Set

from patio import jsontext
from patio.artifacts.adapters import KTHENA_MAX_WORKERS, AdapterArtifacts
from patio.artifacts.uri import display_uri
from patio.engines.base import EngineSpec
from patio.errors import BadRequest, EngineError, NotFound, PatioError
from patio.http.bodies import Body, Field
from patio.http.types import Request, Response, Route
from patio.lora.manager import LoraManager
from patio.lora.records import FAILED, Adapter
from patio.lora.request import LoadRequest
from patio.validate import ADAPTER_NAME, check_path, check_source

log = logging.getLogger("patio.lora")

NAME_PATTERN = f"^{ADAPTER_NAME.pattern}$"  # matched whole (fullmatch): see patio.validate
MAX_WORKERS = 256
SOURCE_FIELDS = ("lora_path", "artifact_url", "source")

LOAD_BODY = Body(
    (
        Field("lora_name", "string", "the adapter's name in the engine", required=True, pattern=NAME_PATTERN),
        Field("lora_path", "string", "local path, or a remote URI (s3://, hf://, ms://, ...)", nullable=True),
        Field("artifact_url", "string", "AIBrix: remote URI to download first", nullable=True),
        Field(
            "source", "string", "Kthena: s3://, obs://, pvc://, ms://org/name, hf://org/name or org/name", nullable=True
        ),
        Field(
            "output_dir",
            "string",
            "Kthena: download directory; must lie inside the adapter dir or the models root",
            nullable=True,
        ),
        Field(
            "config",
            "object_or_json",
            "Kthena: hf_token, hf_endpoint, hf_revision, ms_token, ms_revision, access_key, secret_key, endpoint",
            nullable=True,
        ),
        Field(
            "max_workers",
            "integer",
            "Kthena: parallel transfers (default 8)",
            minimum=1,
            maximum=MAX_WORKERS,
            nullable=True,
        ),
        Field(
            "async_download",
            "boolean",
            "Kthena: answer 202 at once; follow GET /v1/lora_adapters/{name}",
            nullable=True,
        ),
        Field("credentials", "object", "credentials for the download (never logged or echoed)", nullable=True),
        Field("credentials_secret", "string", "AIBrix: a secret mounted under --credentials-dir", nullable=True),
        Field(
            "additional_config",
            "object",
            "AIBrix: merged over the credentials; api-key is the engine's key",
            nullable=True,
        ),
        Field(
            "local_dir", "string", "AIBrix: adapters go below it; must be the adapter dir or inside it", nullable=True
        ),
        Field(
            "cleanup_local",
            "boolean",
            "delete the downloaded copy on unload (default true; false with output_dir)",
            nullable=True,
        ),
        Field("pinned", "boolean", "SGLang only", engines=frozenset({"sglang"}), nullable=True),
        Field(
            "load_inplace",
            "boolean",
            "vLLM only: replace the weights under the same name",
            engines=frozenset({"vllm"}),
            nullable=True,
        ),
    )
)
UNLOAD_BODY = Body(
    (
        Field("lora_name", "string", required=True, pattern=NAME_PATTERN),
        Field("cleanup_local", "boolean", "delete the downloaded copy (default: what the load said)", nullable=True),
        Field("lora_int_id", "integer", "vLLM only", engines=frozenset({"vllm"}), nullable=True),
    )
)
SUCCESS_SCHEMA = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "description": "success; started (202, async_download)"},
        "message": {"type": "string"},
        "lora_name": {"type": "string"},
        "lora_path": {"type": "string"},
        "local_path": {"type": "string", "description": "AIBrix: where the adapter is on disk"},
        "engine_response": {"type": "object", "description": "AIBrix: the engine's answer"},
        "source": {"type": "string", "description": "Kthena (202): the source, without secrets"},
        "output_dir": {"type": "string", "description": "Kthena (202)"},
        "status_url": {"type": "string", "description": "202: where to follow the load"},
    },
}
LOAD_PATHS = ("/load_lora_adapter", "/v1/lora_adapter/load", "/v1/load_lora_adapter")
UNLOAD_PATHS = ("/unload_lora_adapter", "/v1/lora_adapter/unload", "/v1/unload_lora_adapter")


def engine_key_of(additional: Optional[Dict[str, Any]]) -> Optional[str]:
    """AIBrix's controller puts the engine's API key in additional_config["api-key"]."""
    if not additional or "api-key" not in additional:
        return None
    key = additional["api-key"]
    if not isinstance(key, str) or not key.strip() or any(c in key for c in "\r\n\x00"):
        raise BadRequest("additional_config.api-key must be a non-empty string", param="additional_config")
    return key.strip()


def adapter_view(adapter: Adapter, download: Optional[Dict[str, Any]], downloads: bool) -> Dict[str, Any]:
    """One adapter as ``GET /v1/lora_adapters`` shows it: no secret (the source without userinfo or
    signed query, never the engine key), and the download's progress where Patio fetched it."""
    view: Dict[str, Any] = {
        "name": adapter.name,
        "source": display_uri(adapter.source),
        "path": adapter.path,
        "state": adapter.state,
        "last_error": adapter.last_error,
        "loaded_at": adapter.loaded_at,
        "engine_confirmed": adapter.engine_confirmed,
        "remote": adapter.remote,
        "origin": adapter.origin,
    }
    if adapter.extra:
        view["options"] = dict(adapter.extra)
    if downloads and adapter.remote:
        view["download"] = download
    return view


class LoraApi:
    def __init__(
        self,
        manager: LoraManager,
        spec: EngineSpec,
        desired_status: Optional[Callable[[], Dict[str, Any]]] = None,
        *,
        artifacts: Optional[AdapterArtifacts] = None,
    ) -> None:
        self.manager = manager
        self.spec = spec
        # Plans the download half of a load before it starts; shows download progress.
        self.artifacts = artifacts
        # The adapters file's result (patio.lora.desired_sync), shown beside the adapters.
        self.desired_status = desired_status
        # Async loads (Kthena's async_download) whose outcome the manager does not hold: so no
        # outcome is ever lost, GET /v1/lora_adapters shows them until the name is used again.
        self._background: Dict[str, Dict[str, Any]] = {}
        self._tasks: Set["asyncio.Task[None]"] = set()

    async def load(self, request: Request) -> Response:
        body = LOAD_BODY.check(request.json_object(), self.spec.name)
        load = await self.load_request(body)
        if body.get("async_download"):
            return self._start_background(load)
        message, adapter = await self.manager.load(load)
        return Response.json(
            {
                "status": "success",
                "message": message,
                "lora_name": adapter.name,
                "lora_path": adapter.path,
                "local_path": adapter.path,
                "engine_response": {"message": message},
            }
        )

    async def load_request(self, body: Dict[str, Any]) -> LoadRequest:
        """The one load request a checked body stands for: its download half planned (credentials
        read, a named target confined) before anything starts, so its errors are the caller's now."""
        given = [f for f in SOURCE_FIELDS if f in body]
        if len(given) > 1:
            raise BadRequest(
                f"give one of lora_path, artifact_url or source, not {' and '.join(given)}", param=given[1]
            )
        if not given:
            raise BadRequest("lora_path is required (or artifact_url, or source)", param="lora_path")
        field = given[0]
        secret = body.get("credentials_secret")
        if secret is not None:
            check_source(secret, "credentials_secret")
        for path_field in ("output_dir", "local_dir"):
            if path_field in body:
                check_path(body[path_field], path_field)
        engine_key = engine_key_of(body.get("additional_config"))
        # A directory the caller named (Kthena's output_dir) is the caller's: never deleted unless asked.
        cleanup_local = body.get("cleanup_local", "output_dir" not in body)
        load = LoadRequest(
            body["lora_name"],
            body[field],
            field,
            options=tuple((k, body[k]) for k in ("pinned",) if k in body),
            load_inplace=bool(body.get("load_inplace")),
            cleanup_local=cleanup_local,
            engine_key=engine_key,
        )
        if not load.remote:
            if "output_dir" in body:
                raise BadRequest(
                    f"output_dir applies to downloads; {field} {load.source!r} is read in place", param="output_dir"
                )
            return load
        if self.artifacts is None:
            return load  # the manager refuses remote sources without the seam
        plan = await self.artifacts.plan(
            load.name,
            credentials=body.get("credentials"),
            credentials_secret=secret,
            additional_config=body.get("additional_config"),
            config=body.get("config"),
            output_dir=body.get("output_dir"),
            local_dir=body.get("local_dir"),
            # Kthena's shape without max_workers: Kthena's default, as its runtime does.
            num_threads=body.get("max_workers") or (KTHENA_MAX_WORKERS if field == "source" else None),
        )
        return load.planned(plan, secret)

    def _start_background(self, load: LoadRequest) -> Response:
        name = load.name
        shown = display_uri(load.source)
        location = f"/v1/lora_adapters/{name}"
        self._background[name] = {"name": name, "source": shown, "state": "loading", "accepted_at": time.time()}

        async def run() -> None:
            try:
                await self.manager.load(load)
            except PatioError as exc:
                held = self.manager.adapters.get(name)
                if held is not None and held.state == FAILED:
                    self._background.pop(name, None)  # the manager shows the failure itself
                else:
                    self._background[name] = {
                        "name": name,
                        "source": shown,
                        "state": FAILED,
                        "last_error": exc.message,
                        "error": {"type": exc.error_type, "code": exc.status},
                    }
            except Exception as exc:  # a bug: logged with its trace, and still visible in the listing
                log.exception("background load of LoRA adapter %s crashed", name)
                self._background[name] = {"name": name, "source": shown, "state": FAILED, "last_error": repr(exc)}
            else:
                self._background.pop(name, None)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return Response.json(
            {
                "status": "started",
                "message": "LoRA adapter download and load started in background",
                "lora_name": name,
                "source": shown,
                "output_dir": load.fetch.target if load.fetch is not None else None,
                "status_url": location,
            },
            status=202,
            headers=[("Location", location)],
        )

    async def stop(self) -> None:
        """Cancel background loads (their downloads stay resumable); bounded by the shutdown budget."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    async def unload(self, request: Request) -> Response:
        body = UNLOAD_BODY.check(request.json_object(), self.spec.name)
        extra = {k: body[k] for k in ("lora_int_id",) if k in body}
        message = await self.manager.unload(body["lora_name"], body.get("cleanup_local"), extra)
        self._background.pop(body["lora_name"], None)
        return Response.json({"status": "success", "message": message, "lora_name": body["lora_name"]})

    def _views(self) -> List[Dict[str, Any]]:
        artifacts = self.artifacts
        views = []
        for adapter in self.manager.listed():
            download = artifacts.status(adapter.name) if artifacts is not None and adapter.remote else None
            views.append(adapter_view(adapter, download, artifacts is not None))
        known = {v["name"] for v in views}
        views += [dict(v) for n, v in sorted(self._background.items()) if n not in known]
        return sorted(views, key=lambda v: str(v["name"]))

    async def list_adapters(self, request: Request) -> Response:
        body: Dict[str, Any] = {"object": "list", "engine": self.spec.name, "data": self._views()}
        if self.desired_status is not None:
            body["desired"] = self.desired_status()
        return Response.json(body)

    async def get_adapter(self, request: Request) -> Response:
        name = request.path_params.get("name", "")
        for view in self._views():
            if view["name"] == name:
                return Response.json(view)
        raise NotFound(f"no LoRA adapter {name!r}", param="name")

    async def models(self, request: Request) -> Response:
        context = self.manager.context
        # AIBrix's controller sends the engine's key (additional_config["api-key"]) as a bearer token;
        # without a configured engine key, that is the key the engine expects here too.
        caller = request.header("authorization") or ""
        key = caller[7:].strip() if caller[:7].lower() == "bearer " else None
        result = await context.run_engine_query(
            self.manager.client.models_raw, self.manager.settings.models_timeout, key
        )
        if result.status == 200:
            try:
                jsontext.loads(result.body)
            except ValueError:
                raise EngineError("engine /v1/models answer is not JSON") from None
            return Response(status=200, body=result.body)
        if result.status in (401, 403):
            raise EngineError(
                f"engine refused Patio's credentials ({result.status}); set INFERENCE_ENGINE_API_KEY",
                engine_status=result.status,
                error_type="engine_unauthorized",
            )
        raise EngineError(
            f"engine /v1/models answered {result.status}: {result.text()[:300]}", engine_status=result.status
        )

    def routes(self) -> List[Route]:
        errors = (400, 404, 409, 415, 502, 503, 504)
        # Loads answer 200, or 202 with async_download (Kthena).
        load_answers = (200, 202, 403, 500, 507, *errors)
        routes = [
            Route(
                "POST",
                path,
                self.load,
                summary="Load a LoRA adapter",
                management=True,
                tag="lora",
                request_schema=LOAD_BODY.schema(self.spec.name),
                response_schema=SUCCESS_SCHEMA,
                errors=load_answers,
            )
            for path in LOAD_PATHS
        ]
        routes += [
            Route(
                "POST",
                path,
                self.unload,
                summary="Unload a LoRA adapter",
                management=True,
                tag="lora",
                request_schema=UNLOAD_BODY.schema(self.spec.name),
                response_schema=SUCCESS_SCHEMA,
                errors=errors,
            )
            for path in UNLOAD_PATHS
        ]
        routes.append(Route("GET", "/v1/lora_adapters", self.list_adapters, summary="Adapters Patio knows", tag="lora"))
        routes.append(
            Route(
                "GET",
                "/v1/lora_adapters/{name}",
                self.get_adapter,
                summary="One adapter: state, download progress, last error (follow an async load here)",
                tag="lora",
                errors=(404,),
            )
        )
        routes.append(
            Route(
                "GET",
                "/v1/models",
                self.models,
                summary="The engine's model list (proxied)",
                tag="lora",
                errors=(502, 503, 504),
            )
        )
        return routes
