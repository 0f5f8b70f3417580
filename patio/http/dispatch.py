"""Everything between a parsed request and its ``Response``: the route table, the API key on
management routes, the request metrics, and the mapping of every failure to its JSON answer.

The server hands each request to one ``Dispatcher`` and writes what it returns; it knows no
route, no key and no metric of requests.  An unexpected exception becomes a 500 carrying a
request id that the log names too; that id is the answer's ``X-Request-Id``.  Other answers
carry one only when DEBUG logging is on, where every request is logged with it.
"""

import logging
import os
import time
from typing import Optional, Sequence, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

try:  # hmac.compare_digest's own C core; importing hmac would load OpenSSL (3+ MB resident) for one function
    from _operator import _compare_digest as compare_digest
except ImportError:  # pragma: no cover - an interpreter without _operator
    from hmac import compare_digest  # type: ignore[no-redef]

from patio.errors import InternalError, PatioError, Unauthorized
from patio.http.request_metrics import RequestMetrics
from patio.http.request_parser import ParsedRequest
from patio.http.responses import error_response
from patio.http.routing import UNMATCHED, RouteTable
from patio.http.types import NO_QUERY, Request, Response, Route
from patio.metrics.registry import Registry

log = logging.getLogger("patio.http")

# Method label values; anything else is counted as "other" (bounded cardinality).
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))


def new_request_id() -> str:
    return os.urandom(8).hex()


def split_target(target: str) -> Tuple[str, str]:
    """The decoded path and the raw query of a request target, as urlsplit and unquote give them."""
    split = urlsplit(target)
    return (unquote(split.path) if split.path else "/"), split.query


class Dispatcher:
    """The one request handler of the server: ``await dispatcher(request, client)`` is the
    response and the request id its answer carries (empty for none)."""

    def __init__(self, routes: Sequence[Route], api_key: Optional[str], registry: Registry) -> None:
        self.routes = RouteTable(routes)
        self._api_key = api_key.encode("utf-8") if api_key is not None else None
        self.metrics = RequestMetrics(registry)

    async def __call__(self, parsed: ParsedRequest, client: str) -> Tuple[Response, str]:
        started = time.perf_counter()
        method = parsed.method
        target = parsed.target
        route_label = UNMATCHED
        request_id = ""
        try:
            plain = target[:1] == "/" and target[1:2] != "/"  # origin-form, no authority
            if plain and "?" not in target and "%" not in target and "#" not in target:
                path, query = target, NO_QUERY  # a plain path is its own decoded form (no urlsplit)
            else:
                path, raw_query = split_target(target)
                query = parse_qs(raw_query, keep_blank_values=True) if raw_query else NO_QUERY
            route, params = self.routes.match(method, path)
            if route.management and self._api_key is not None:
                self._authorize(parsed)
            request = Request(method, target, path, query, parsed.headers, parsed.body, params, client)
            response = await route.handler(request)
            route_label = route.path
        except PatioError as exc:
            response = error_response(exc)
        except Exception:
            request_id = new_request_id()
            log.exception("unhandled error in %s %s (request_id=%s)", method, target.split("?", 1)[0], request_id)
            response = error_response(InternalError(f"internal error (request_id={request_id})"))
        method_label = method if method in KNOWN_METHODS else "other"
        self.metrics.count(method_label, route_label, str(response.status), time.perf_counter() - started)
        if log.isEnabledFor(logging.DEBUG):
            request_id = request_id or new_request_id()
            log.debug("%s %s %s -> %d (%s)", client, method, target, response.status, request_id)
        return response, request_id

    def reject(self, error: PatioError) -> Response:
        """The answer to a request that could not be read (400, 408, 413, 431, ...), counted
        under the route of requests that matched none."""
        self.metrics.reject(str(error.status))
        return error_response(error)

    def _authorize(self, parsed: ParsedRequest) -> None:
        assert self._api_key is not None
        given = ""
        for key, value in parsed.headers:
            if key == "authorization":
                scheme, _, token = value.partition(" ")
                if scheme.lower() == "bearer":
                    given = token.strip()
                break
        # Compare in constant time whatever the input.
        if not compare_digest(given.encode("utf-8"), self._api_key):
            raise Unauthorized("missing or invalid API key (send Authorization: Bearer KEY)", param="Authorization")
