"""Values that cross the boundary between the HTTP server and the handlers.

A handler is ``async def handler(request: Request) -> Response``.  It never
touches sockets; the connection (``patio.http.connection``) moves bytes.
"""

import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Awaitable, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from patio.errors import BadRequest, UnsupportedMediaType
from patio.jsontext import JsonTooDeep, loads

Header = Tuple[str, str]

JSON_TYPE = "application/json"


NO_QUERY: Mapping[str, Sequence[str]] = MappingProxyType({})
NO_PARAMS: Mapping[str, str] = MappingProxyType({})


class Request(NamedTuple):
    """One complete HTTP request.  Header names are lower-cased.  Immutable (a tuple: built
    once per request, it costs a fraction of a frozen dataclass)."""

    method: str
    target: str
    path: str
    query: Mapping[str, Sequence[str]]
    headers: Sequence[Header]
    body: bytes = b""
    path_params: Mapping[str, str] = NO_PARAMS
    client: str = ""

    def header(self, name: str) -> Optional[str]:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def query_value(self, name: str) -> Optional[str]:
        values = self.query.get(name)
        return values[-1] if values else None

    def json_object(self) -> Dict[str, Any]:
        """The body as a JSON object; 415 without a JSON Content-Type, 400 if it is not an object."""
        ctype = (self.header("content-type") or "").split(";", 1)[0].strip().lower()
        if ctype != JSON_TYPE:
            raise UnsupportedMediaType("Content-Type must be application/json", param="Content-Type")
        try:
            value = loads(self.body.decode("utf-8")) if self.body else None
        except JsonTooDeep as exc:
            raise BadRequest(f"body {exc}", param="body") from None
        except ValueError as exc:  # UnicodeDecodeError included
            raise BadRequest(f"body is not valid JSON: {exc}", param="body") from None
        if not isinstance(value, dict):
            raise BadRequest("body must be a JSON object", param="body")
        return value


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: Optional[str] = "application/json"
    headers: List[Header] = field(default_factory=list)
    # Sent after ``body`` without being copied into it: one object shared by every concurrent
    # answer (the engine's share of /metrics), so a thousand slow scrapers hold one copy, not a
    # thousand.
    shared_tail: Tuple[bytes, ...] = ()

    @property
    def content_length(self) -> int:
        if not self.shared_tail:
            return len(self.body)
        return len(self.body) + sum(map(len, self.shared_tail))

    def parts(self) -> Tuple[bytes, ...]:
        """The body as written: ``body`` then the ``shared_tail`` pieces."""
        if not self.shared_tail:
            return (self.body,) if self.body else ()
        return tuple(part for part in (self.body, *self.shared_tail) if part)

    @classmethod
    def json(cls, value: Any, status: int = 200, headers: Optional[List[Header]] = None) -> "Response":
        body = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return cls(status=status, body=body, content_type=JSON_TYPE, headers=list(headers or []))

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8") -> "Response":
        return cls(status=status, body=text.encode("utf-8"), content_type=content_type)


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    """One row of the route table.

    ``path`` may hold ``{name}`` segments, matched as one path segment each; the template
    itself is the route label of the request metrics (bounded cardinality).
    ``management`` routes change state and need the API key when one is set.
    The schema fields feed the generated OpenAPI document.
    """

    method: str
    path: str
    handler: Handler
    summary: str = ""
    management: bool = False
    tag: str = "core"
    request_schema: Optional[Mapping[str, Any]] = None
    response_schema: Optional[Mapping[str, Any]] = None
    errors: Tuple[int, ...] = ()
    response_type: str = JSON_TYPE
