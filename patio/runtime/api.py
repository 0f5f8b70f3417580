"""The model-runtime routes, AIBrix 0.8.0's (``aibrix/runtime/model_runtime_api.py``):

    POST /v1/runtime/models/activate     -> {status, model_name, port, ipc_name, message}
    POST /v1/runtime/models/deactivate   -> {status: "success"}
    POST /v1/runtime/models/sleep        -> {status, model_name, operation_id, applied, phase}
    POST /v1/runtime/models/wake         -> the same
    POST /v1/runtime/models/kv-limit     -> the same
    GET  /v1/runtime/models              -> {models: [{model_name, port, ipc_name, phase, ready, kv_*}]}
    GET  /v1/runtime/snapshot            -> RuntimeSnapshotResponse

Errors: activate keeps AIBrix's body (``status: "error"``, the model name, the message)
with its status (400 for a bad request, 409 for a conflict, 500 when the engine fails to
start); a failed wake keeps AIBrix's ``{status: "error", model_name, message}`` with 500.
Both also carry Patio's error fields (``object``, ``type``, ``param``, ``code``), as
every other error does alone.  404 for an unknown model, 409 where the engine cannot do
it or is still serving.  Every route is a management route (the API key, when set).
"""

from typing import Any, Dict, Sequence

from patio.errors import PatioError
from patio.http.types import Request, Response, Route
from patio.runtime.requests import (
    ACTIVATE_BODY,
    DEACTIVATE_BODY,
    KV_LIMIT_BODY,
    SLEEP_BODY,
    WAKE_BODY,
    check_clean,
    parse_activate,
    parse_deactivate,
    parse_operation,
)
from patio.runtime.service import Runtime

_OPERATION_SCHEMA = {
    "type": "object",
    "properties": {
        "status": {"type": "string"},
        "model_name": {"type": "string"},
        "operation_id": {"type": "string"},
        "applied": {"type": "boolean", "description": "false: done before under this id, or nothing to do"},
        "phase": {"type": "string"},
    },
}
_ACTIVATE_SCHEMA = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "description": "success or error"},
        "model_name": {"type": "string"},
        "port": {"type": "integer"},
        "ipc_name": {"type": "string"},
        "message": {"type": ["string", "null"]},
    },
}


def _echo(raw: Any) -> str:
    """The request's model name for an error body: only a clean, short one is echoed."""
    name = raw.get("model_name") if isinstance(raw, dict) else None
    return name if isinstance(name, str) and len(name) <= 256 and check_clean(name) else ""


def _status(exc: PatioError) -> int:
    # AIBrix answers 400 for a bad request and 500 for every other failure; Patio keeps the
    # precise 4xx (409 conflict, 404, 413...) and 503, and says 500 for the rest.
    return exc.status if 400 <= exc.status < 500 or exc.status == 503 else 500


class RuntimeApi:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def activate(self, request: Request) -> Response:
        raw: Any = None
        try:
            await self.runtime.wait_adopted()
            raw = request.json_object()
            parsed = parse_activate(raw)
            record = await self.runtime.activate(parsed)
        except PatioError as exc:
            status = _status(exc)
            body: Dict[str, Any] = {"status": "error", "model_name": _echo(raw), "port": 0, "ipc_name": ""}
            body.update(exc.to_dict())
            body["code"] = status
            return Response.json(body, status=status)
        return Response.json(
            {
                "status": "success",
                "model_name": record.model_name,
                "port": record.port,
                "ipc_name": record.ipc_name,
                "message": None,
            }
        )

    async def deactivate(self, request: Request) -> Response:
        await self.runtime.wait_adopted()
        name, mode = parse_deactivate(request.json_object())
        await self.runtime.deactivate(name, mode)
        return Response.json({"status": "success"})

    def _refusal(self, exc: PatioError) -> Response:
        body = exc.to_dict()
        body["detail"] = exc.message  # FastAPI's HTTPException field, for clients that read it
        return Response.json(body, status=exc.status)

    async def sleep(self, request: Request) -> Response:
        await self.runtime.wait_adopted()
        op = parse_operation("sleep", request.json_object())
        try:
            result = await self.runtime.sleep(op)
        except PatioError as exc:  # 404, 409 busy/unsupported/still serving, 5xx from the engine
            return self._refusal(exc)
        return Response.json(result.to_json())

    async def kv_limit(self, request: Request) -> Response:
        await self.runtime.wait_adopted()
        op = parse_operation("kv-limit", request.json_object())
        try:
            result = await self.runtime.kv_limit(op)
        except PatioError as exc:
            return self._refusal(exc)
        return Response.json(result.to_json())

    async def wake(self, request: Request) -> Response:
        await self.runtime.wait_adopted()
        op = parse_operation("wake", request.json_object())
        try:
            result = await self.runtime.wake(op)
        except PatioError as exc:
            if 400 <= exc.status < 500:
                return self._refusal(exc)
            # AIBrix says so in the body: the controller then knows the runtime failed to wake
            # the engine (a bare 5xx could come from a proxy on the way).
            body: Dict[str, Any] = {"status": "error", "model_name": op.model_name, "message": exc.message}
            body.update({k: v for k, v in exc.to_dict().items() if k != "message"})
            body["code"] = 500
            return Response.json(body, status=500)
        return Response.json(result.to_json())

    async def models(self, request: Request) -> Response:
        await self.runtime.wait_adopted()
        return Response.json(await self.runtime.listing())

    async def snapshot(self, request: Request) -> Response:
        await self.runtime.wait_adopted()
        return Response.json(await self.runtime.snapshot())

    def routes(self) -> Sequence[Route]:
        def post(path: str, handler: Any, summary: str, body: Any, answer: Any, errors: Any) -> Route:
            return Route(
                "POST",
                path,
                handler,
                summary=summary,
                management=True,
                tag="runtime",
                request_schema=body.schema(),
                response_schema=answer,
                errors=errors,
            )

        return (
            post(
                "/v1/runtime/models/activate",
                self.activate,
                "Start a model as its own engine process (AIBrix ModelClaim)",
                ACTIVATE_BODY,
                _ACTIVATE_SCHEMA,
                (400, 401, 409, 415, 500, 503),
            ),
            post(
                "/v1/runtime/models/deactivate",
                self.deactivate,
                "Stop a model's engine: its whole process group",
                DEACTIVATE_BODY,
                {"type": "object", "properties": {"status": {"type": "string"}}},
                (400, 401, 409, 415, 500),
            ),
            post(
                "/v1/runtime/models/sleep",
                self.sleep,
                "Put a model's engine to sleep (drained first)",
                SLEEP_BODY,
                _OPERATION_SCHEMA,
                (400, 401, 404, 409, 415, 500, 502, 503, 504),
            ),
            post(
                "/v1/runtime/models/wake",
                self.wake,
                "Wake a sleeping engine",
                WAKE_BODY,
                _OPERATION_SCHEMA,
                (400, 401, 404, 409, 415, 500),
            ),
            post(
                "/v1/runtime/models/kv-limit",
                self.kv_limit,
                "Set a model's kvcached KV limit",
                KV_LIMIT_BODY,
                _OPERATION_SCHEMA,
                (400, 401, 404, 409, 415, 503),
            ),
            Route(
                "GET",
                "/v1/runtime/models",
                self.models,
                summary="Models this runtime runs, the engine beside Patio included",
                management=True,
                tag="runtime",
                errors=(401,),
            ),
            Route(
                "GET",
                "/v1/runtime/snapshot",
                self.snapshot,
                summary="Accelerators, engines and cached artifacts, for placement",
                management=True,
                tag="runtime",
                errors=(401,),
            ),
        )
