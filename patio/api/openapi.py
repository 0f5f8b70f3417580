"""The OpenAPI 3 document and the HTML reference, generated from the route table.

Generated, not written, so the documentation cannot drift from the routes.
"""

from typing import Any, Dict, List, Sequence

from patio import __version__
from patio.http.types import Route

ERROR_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "required": ["object", "type", "message", "param", "code"],
    "properties": {
        "object": {"type": "string", "enum": ["error"]},
        "type": {"type": "string"},
        "message": {"type": "string"},
        "param": {"type": ["string", "null"]},
        "code": {"type": "integer"},
    },
}

_STATUS_TEXT = {
    400: "Bad request",
    401: "Missing or invalid API key",
    404: "Not found",
    408: "Request not received in time",
    409: "Conflict",
    413: "Body too large",
    415: "Body is not application/json",
    431: "Headers too large",
    500: "Internal error",
    502: "The engine failed",
    503: "Engine unavailable or not ready",
    504: "The engine timed out",
}


_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"})


def escape(text: str) -> str:
    """``html.escape(text, quote=True)``, without importing html (its entity table is large)."""
    return text.translate(_ESCAPES)


def _operation(route: Route, api_key: bool) -> Dict[str, Any]:
    op: Dict[str, Any] = {
        "summary": route.summary or f"{route.method} {route.path}",
        "operationId": (route.method.lower() + route.path.replace("/", "_").replace("{", "").replace("}", "")).rstrip(
            "_"
        )
        or "root",
        "tags": [route.tag],
    }
    params = [seg[1:-1] for seg in route.path.split("/") if seg.startswith("{") and seg.endswith("}")]
    if params:
        op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
    if route.request_schema is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": dict(route.request_schema)}}}
    ok: Dict[str, Any] = {"description": "Success"}
    ok["content"] = {route.response_type: {"schema": dict(route.response_schema or {"type": "object"})}}
    if route.response_type != "application/json":
        ok["content"] = {route.response_type: {"schema": {"type": "string"}}}
    # A route listing 202 among its answers succeeds with 202 Accepted (asynchronous jobs); one
    # listing 200 too answers either (Kthena's sync/async loads and downloads).
    responses: Dict[str, Any] = {}
    if 202 not in route.errors or 200 in route.errors:
        responses["200"] = ok
    if 202 in route.errors:
        responses["202"] = dict(ok, description="Accepted: follow the Location header")
    codes = set(route.errors) - {200, 202}
    if route.request_schema is not None:
        codes |= {400, 413, 415}
    if route.management and api_key:
        codes.add(401)
    codes.add(500)
    for code in sorted(codes):
        responses[str(code)] = {
            "description": _STATUS_TEXT.get(code, "Error"),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    op["responses"] = responses
    if route.management:
        op["security"] = [{"bearer": []}]
        op["x-management"] = True
    return op


def openapi_document(routes: Sequence[Route], api_key: bool) -> Dict[str, Any]:
    """``api_key``: the management routes require one (marked with ``security``)."""
    paths: Dict[str, Dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, api_key)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Patio",
            "version": __version__,
            "description": (
                "Sidecar for LLM inference engines: LoRA management, unified metrics, topology, probes, downloads."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def docs_html(document: Dict[str, Any]) -> str:
    """A self-contained page (no external assets) listing every operation."""
    rows: List[str] = []
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            codes = ", ".join(op["responses"])
            auth = " (API key)" if op.get("x-management") else ""
            body = ""
            if "requestBody" in op:
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                props = ", ".join(schema.get("properties", {}))
                body = f"<br><small>body: {escape(props)}</small>"
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{escape(path)}</code></td>"
                f"<td>{escape(op['summary'])}{auth}{body}</td><td>{codes}</td></tr>"
            )
    info = document["info"]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Patio API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{border-bottom:1px solid #ddd;padding:4px 8px;"
        "text-align:left;vertical-align:top}</style></head><body>"
        f"<h1>Patio {escape(info['version'])}</h1><p>{escape(info['description'])}</p>"
        '<p>Errors are JSON: <code>{"object":"error","type","message","param","code"}</code>. '
        "The machine-readable document is at <a href='/openapi.json'>/openapi.json</a>.</p>"
        "<table><tr><th>Method</th><th>Path</th><th>What</th><th>Answers</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
