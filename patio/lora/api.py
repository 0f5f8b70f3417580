"""LoRA routes: the three incumbents' paths over one manager, with strict validation.

Patio/RoleBasedGroup: ``/load_lora_adapter``, ``/unload_lora_adapter``;
AIBrix: ``/v1/lora_adapter/load``, ``/v1/lora_adapter/unload`` (also
``artifact_url``, ``credentials``, ``additional_config``, ``cleanup_local``);
Kthena/vLLM: ``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``.
"""

import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from patio.engines.base import EngineSpec
from patio.errors import BadRequest, EngineError
from patio.http.types import Request, Response, Route
from patio.lora.manager import LoraManager
from patio.validate import ADAPTER_NAME, check_local_or_uri, check_name, check_source

NAME_PATTERN = ADAPTER_NAME  # matched whole (fullmatch): see patio.validate
# Fields every load path accepts (AIBrix's delegation fields included), and their types.
COMMON_LOAD_FIELDS: Mapping[str, type] = {
    "lora_name": str,
    "lora_path": str,
    "artifact_url": str,
    "credentials": dict,
    "additional_config": dict,
    "cleanup_local": bool,
}
COMMON_UNLOAD_FIELDS: Mapping[str, type] = {"lora_name": str, "cleanup_local": bool}
# Engine-specific fields, by the engine that understands them.
ENGINE_FIELDS: Mapping[str, type] = {"pinned": bool, "load_inplace": bool, "lora_int_id": int}

LOAD_PATHS = ("/load_lora_adapter", "/v1/lora_adapter/load", "/v1/load_lora_adapter")
UNLOAD_PATHS = ("/unload_lora_adapter", "/v1/lora_adapter/unload", "/v1/unload_lora_adapter")

_NAME_SCHEMA = {"type": "string", "pattern": f"^{NAME_PATTERN.pattern}$"}
LOAD_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "required": ["lora_name"],
    "additionalProperties": False,
    "properties": {
        "lora_name": _NAME_SCHEMA,
        "lora_path": {"type": "string", "minLength": 1, "description": "local path or remote URI (s3://, hf://, ...)"},
        "artifact_url": {"type": "string", "minLength": 1, "description": "AIBrix: remote URI to download first"},
        "credentials": {"type": "object", "description": "AIBrix: credentials for artifact_url (never logged)"},
        "additional_config": {"type": "object"},
        "cleanup_local": {"type": "boolean", "description": "delete the downloaded copy on unload (default true)"},
        "pinned": {"type": "boolean", "description": "SGLang only"},
        "load_inplace": {"type": "boolean", "description": "vLLM only: replace the weights under the same name"},
    },
}
UNLOAD_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "required": ["lora_name"],
    "additionalProperties": False,
    "properties": {
        "lora_name": _NAME_SCHEMA,
        "cleanup_local": {"type": "boolean"},
        "lora_int_id": {"type": "integer", "description": "vLLM only"},
    },
}
SUCCESS_SCHEMA = {
    "type": "object",
    "properties": {"status": {"type": "string"}, "message": {"type": "string"}, "lora_name": {"type": "string"}},
}


def _check_type(field: str, value: Any, kind: type) -> None:
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        names = {str: "a string", bool: "true or false", dict: "an object", int: "an integer"}
        raise BadRequest(f"{field} must be {names[kind]}", param=field)


def validate(body: Mapping[str, Any], common: Mapping[str, type], engine_fields: Sequence[str], engine: str) -> None:
    for field, value in body.items():
        if field in common:
            _check_type(field, value, common[field])
        elif field in ENGINE_FIELDS:
            if field not in engine_fields:
                raise BadRequest(f"field {field!r} is not supported by {engine}", param=field)
            _check_type(field, value, ENGINE_FIELDS[field])
        else:
            raise BadRequest(f"unknown field {field!r}", param=field)
    name = body.get("lora_name")
    if name is None:
        raise BadRequest("lora_name is required", param="lora_name")
    check_name(name, "lora_name")
    for field in ("lora_path", "artifact_url"):
        if field in body:
            check_source(body[field], field)


class LoraApi:
    def __init__(
        self,
        manager: LoraManager,
        spec: EngineSpec,
        desired_status: Optional[Callable[[], Dict[str, Any]]] = None,
    ) -> None:
        self.manager = manager
        self.spec = spec
        # The adapters file's result (patio.lora.desired_sync), shown beside the adapters.
        self.desired_status = desired_status

    async def load(self, request: Request) -> Response:
        body = request.json_object()
        validate(body, COMMON_LOAD_FIELDS, sorted(self.spec.load_fields), self.spec.name)
        path, url = body.get("lora_path"), body.get("artifact_url")
        if path is not None and url is not None:
            raise BadRequest("give lora_path or artifact_url, not both", param="artifact_url")
        source = path if path is not None else url
        if source is None:
            raise BadRequest("lora_path is required", param="lora_path")
        field = "lora_path" if path is not None else "artifact_url"
        if not source.strip():
            raise BadRequest(f"{field} must not be empty", param=field)
        check_local_or_uri(source, field)
        extra = {k: body[k] for k in ("pinned",) if k in body and k in self.spec.load_fields}
        message, adapter = await self.manager.load(
            body["lora_name"],
            source,
            extra,
            load_inplace=bool(body.get("load_inplace")),
            credentials=body.get("credentials"),
            cleanup_local=body.get("cleanup_local", True),
        )
        return Response.json(
            {"status": "success", "message": message, "lora_name": adapter.name, "lora_path": adapter.path}
        )

    async def unload(self, request: Request) -> Response:
        body = request.json_object()
        validate(body, COMMON_UNLOAD_FIELDS, sorted(self.spec.unload_fields), self.spec.name)
        extra = {k: body[k] for k in ("lora_int_id",) if k in body}
        message = await self.manager.unload(body["lora_name"], body.get("cleanup_local"), extra)
        return Response.json({"status": "success", "message": message, "lora_name": body["lora_name"]})

    async def list_adapters(self, request: Request) -> Response:
        body: Dict[str, Any] = {"object": "list", "engine": self.spec.name, "data": self.manager.views()}
        if self.desired_status is not None:
            body["desired"] = self.desired_status()
        return Response.json(body)

    async def models(self, request: Request) -> Response:
        context = self.manager.context
        result = await context.run_engine_query(self.manager.client.models_raw, self.manager.settings.models_timeout)
        if result.status == 200:
            try:
                json.loads(result.body)
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
        routes = [
            Route(
                "POST",
                path,
                self.load,
                summary="Load a LoRA adapter",
                management=True,
                tag="lora",
                request_schema=LOAD_SCHEMA,
                response_schema=SUCCESS_SCHEMA,
                errors=errors,
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
                request_schema=UNLOAD_SCHEMA,
                response_schema=SUCCESS_SCHEMA,
                errors=errors,
            )
            for path in UNLOAD_PATHS
        ]
        routes.append(Route("GET", "/v1/lora_adapters", self.list_adapters, summary="Adapters Patio knows", tag="lora"))
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
