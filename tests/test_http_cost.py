"""The cost of one liveness probe, as a deterministic budget: the Python function calls the
server makes to answer one ``GET /healthz`` on a warm keep-alive connection.

Counted with ``sys.setprofile`` around the connection's handling of the bytes (its
``data_received``: parse, dispatch, the handler, request metrics, the answer written to the
socket), on the real server over a real socket.  No clocks.  The least of three requests is
taken: the ``Date`` header is formatted anew when a request falls in a new second.

When the budget is exceeded the message names the functions that are called more often than
in the table below (the breakdown this budget was set from, on CPython 3.11).  A change that
makes probes cost more must say so here.
"""

import socket
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

import pytest
from support import RunningPatio, make_settings

from patio.http.connection import HttpConnection

PROBE = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: kube-probe/1.30\r\nAccept: */*\r\n\r\n"

# The calls of one warm /healthz as measured when the budget was set (CPython 3.11: 22; 3.8
# the same; 3.12 and 3.13 make 24, their eager task asks the loop twice).  Before the HTTP room
# was rebuilt, the loop thread made 279 Python calls per probe; it makes 32 now, 22 of them here.
BREAKDOWN = {
    "/<string>:<lambda>": 1,  # Request.__new__ (a NamedTuple)
    "/<string>:__create_fn__.<locals>.__init__": 1,  # Response.__init__ (a dataclass)
    "api/core.py:CoreComponent.live": 1,
    "asyncio/selector_events.py:_SelectorSocketTransport.write": 1,
    "http/admission.py:Admission.rest": 1,
    "http/connection.py:HttpConnection._advance": 1,
    "http/connection.py:HttpConnection._answer": 1,
    "http/connection.py:HttpConnection._await_more": 1,
    "http/connection.py:HttpConnection._send": 1,
    "http/connection.py:HttpConnection.data_received": 1,
    "http/dispatch.py:Dispatcher.__call__": 1,
    "http/eager.py:start_by_hand": 1,
    "http/request_metrics.py:RequestMetrics.count": 1,
    "http/request_parser.py:RequestParser._parse_head": 1,
    "http/request_parser.py:RequestParser.feed": 1,
    "http/request_parser.py:RequestParser.in_progress": 1,
    "http/request_parser.py:RequestParser.next_request": 2,
    "http/responses.py:DateCache.get": 1,
    "http/responses.py:head_bytes": 1,
    "http/routing.py:RouteTable.match": 1,
    "logging/__init__.py:Logger.isEnabledFor": 1,
}
BUDGET = 25
COUNTED = 3


def _where(frame: Any) -> str:
    code = frame.f_code
    path = Path(code.co_filename)
    return f"{path.parent.name}/{path.name}:{getattr(code, 'co_qualname', code.co_name)}"


def _read_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def probe_calls(monkeypatch: pytest.MonkeyPatch) -> List["Counter[str]"]:
    """Calls per request for COUNTED warm probes, one Counter of function -> calls each."""
    counts: List["Counter[str]"] = []
    original = HttpConnection.data_received

    def counted(conn: HttpConnection, data: bytes) -> None:
        calls: "Counter[str]" = Counter()

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "call":
                calls[_where(frame)] += 1

        sys.setprofile(profile)
        try:
            original(conn, data)
        finally:
            sys.setprofile(None)
        counts.append(calls)

    monkeypatch.setattr(HttpConnection, "data_received", counted)
    settings = make_settings(["--scrape-engine-metrics", "false"], {"INFERENCE_ENGINE_ENDPOINT": "http://127.0.0.1:9"})
    with RunningPatio(settings) as patio, socket.create_connection(("127.0.0.1", patio.port)) as sock:
        for _ in range(1 + COUNTED):  # the first warms the caches (parsed head, route, metric series)
            sock.sendall(PROBE)
            assert _read_answer(sock).startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(counts) == 1 + COUNTED, "each probe should arrive in one piece"
    return counts[1:]


def grown(calls: "Counter[str]", recorded: Dict[str, int]) -> List[str]:
    return [
        f"{name}: {count} (was {recorded.get(name, 0)})"
        for name, count in sorted(calls.items())
        if count > recorded.get(name, 0)
    ]


def test_a_warm_healthz_stays_within_its_call_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = min(probe_calls(monkeypatch), key=lambda c: sum(c.values()))
    total = sum(calls.values())
    assert total <= BUDGET, (
        f"one /healthz now makes {total} Python calls (budget {BUDGET}); called more often than when the"
        " budget was set:\n  " + "\n  ".join(grown(calls, BREAKDOWN) or ["(none: the table below is stale)"])
    )


def test_the_budget_message_names_what_grew() -> None:
    recorded = {"http/connection.py:HttpConnection._advance": 1}
    now: "Counter[str]" = Counter({"http/connection.py:HttpConnection._advance": 2, "a/b.py:new": 1})
    assert grown(now, recorded) == ["a/b.py:new: 1 (was 0)", "http/connection.py:HttpConnection._advance: 2 (was 1)"]
