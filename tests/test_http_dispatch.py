"""The one request handler (patio/http/dispatch.py) without a socket: what a handler sees of the
target, which answers carry a request id, how unreadable requests are counted."""

import asyncio
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from patio.errors import HeadersTooLarge
from patio.http.dispatch import Dispatcher, split_target
from patio.http.request_metrics import DURATION, DURATION_HELP, REQUESTS, REQUESTS_HELP, RequestMetrics
from patio.http.request_parser import ParsedRequest
from patio.http.types import Request, Response, Route
from patio.metrics.registry import Registry


def _parsed(target: str, method: str = "GET") -> ParsedRequest:
    return ParsedRequest(method, target, "HTTP/1.1", (("host", "x"),), b"", True)


def _dispatcher(routes: Sequence[Route], api_key: Optional[str] = None) -> Tuple[Dispatcher, Registry]:
    registry = Registry()
    return Dispatcher(routes, api_key, registry), registry


def _answer(dispatcher: Dispatcher, parsed: ParsedRequest) -> Tuple[Response, str]:
    async def call() -> Tuple[Response, str]:
        return await dispatcher(parsed, "10.0.0.1:5000")

    return asyncio.run(call())


TARGETS = {
    "plain": "/healthz",
    "query": "/v1/models?x=1&x=2&empty=",
    "escaped": "/v1/a%20b",
    "escaped slash": "/v1/a%2Fb",
    "fragment": "/healthz#top",
    "query and fragment": "/q?a=1#f",
    "authority form": "//host/healthz",
    "semicolon": "/a;b",
    "trailing question mark": "/healthz?",
    "absolute form": "http://example/healthz",
}


@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS.keys())
def test_handlers_see_the_target_as_urlsplit_and_unquote_read_it(target: str) -> None:
    """The plain-path shortcut must give what urlsplit + unquote give, and so must the rest."""
    split = urlsplit(target)
    path = unquote(split.path) if split.path else "/"
    query = parse_qs(split.query, keep_blank_values=True) if split.query else {}
    assert split_target(target) == (path, split.query)
    seen: List[Request] = []

    async def capture(request: Request) -> Response:
        seen.append(request)
        return Response(body=b"{}")

    dispatcher, _ = _dispatcher([Route("GET", path, capture)])
    response, _ = _answer(dispatcher, _parsed(target))
    assert response.status == 200
    assert (seen[0].path, dict(seen[0].query), seen[0].target) == (path, query, target)
    assert seen[0].client == "10.0.0.1:5000"


async def _ok(request: Request) -> Response:
    return Response(body=b"{}")


async def _boom(request: Request) -> Response:
    raise RuntimeError("handler bug")


def _requests(registry: Registry) -> Dict[Tuple[Tuple[str, str], ...], float]:
    return {
        sample.labels: sample.value
        for family in registry.collect()
        if family.name == "patio_http_requests_total"
        for sample in family.samples
    }


def test_only_a_500_carries_a_request_id_and_the_log_names_it(caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="patio.http")
    dispatcher, _ = _dispatcher([Route("GET", "/ok", _ok), Route("GET", "/boom", _boom)])
    ok, ok_id = _answer(dispatcher, _parsed("/ok"))
    assert ok.status == 200 and ok_id == ""
    failed, failed_id = _answer(dispatcher, _parsed("/boom"))
    assert failed.status == 500 and len(failed_id) == 16
    assert failed_id in failed.body.decode() and failed_id in caplog.text


def test_with_debug_logging_every_request_is_logged_with_its_id(caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="patio.http")
    dispatcher, _ = _dispatcher([Route("GET", "/ok", _ok)])
    _, request_id = _answer(dispatcher, _parsed("/ok"))
    assert request_id and f"GET /ok -> 200 ({request_id})" in caplog.text


def test_errors_before_and_inside_a_route_are_counted_as_unmatched() -> None:
    """As before the split: the route label is set once the handler answered (a handler's own
    PatioError, like a 401 or a 404 from a route, counts under "unmatched")."""
    dispatcher, registry = _dispatcher([Route("GET", "/ok", _ok), Route("POST", "/manage", _ok, management=True)], "k")
    assert dispatcher.reject(HeadersTooLarge("too big")).status == 431
    _answer(dispatcher, _parsed("/nope"))
    _answer(dispatcher, _parsed("/manage", "POST"))
    _answer(dispatcher, _parsed("/ok", "BREW"))
    _answer(dispatcher, _parsed("/ok"))
    counted: Mapping[Tuple[Tuple[str, str], ...], float] = _requests(registry)
    assert counted == {
        (("method", "other"), ("route", "unmatched"), ("code", "431")): 1.0,
        (("method", "GET"), ("route", "unmatched"), ("code", "404")): 1.0,
        (("method", "POST"), ("route", "unmatched"), ("code", "401")): 1.0,
        (("method", "other"), ("route", "unmatched"), ("code", "405")): 1.0,
        (("method", "GET"), ("route", "/ok"), ("code", "200")): 1.0,
    }


def test_request_metrics_read_as_the_registry_would_write_them() -> None:
    """The request tallies skip the registry's per-call work; what they expose must be what its
    own Counter and Histogram expose for the same requests, family for family."""
    answered = [
        ("GET", "/healthz", "200", 0.00004),
        ("GET", "/healthz", "200", 0.0031),
        ("GET", "/metrics", "200", 0.25),
        ("POST", "unmatched", "404", 12.0),
        ("GET", "/healthz", "503", 0.001),  # exactly on a bound
    ]
    fast = RequestMetrics(Registry())
    reference = Registry()
    counter = reference.counter(REQUESTS, REQUESTS_HELP, ("method", "route", "code"))
    histogram = reference.histogram(DURATION, DURATION_HELP, ("method", "route"))
    for method, route, code, seconds in answered:
        fast.count(method, route, code, seconds)
        counter.inc(method, route, code)
        histogram.observe(seconds, method, route)
    fast.reject("431")
    counter.inc("other", "unmatched", "431")
    assert fast.families() == [counter.family(), histogram.family()]
