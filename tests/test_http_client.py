"""Patio's blocking HTTP client for the engine and router, against a scripted peer on a
real socket: every framing, every way a peer can fail, the deadline, keep-alive reuse."""

import socket
import threading
import time
from typing import Callable, List, NamedTuple, Optional, Type

import pytest
from support import free_port

from patio import errors
from patio.errors import PatioError, PeerError, PeerTimeout
from patio.http.client import (
    KeepAliveClient,
    Origin,
    PeerUnavailable,
    http_request,
    request_bytes,
    resolver_host,
)

# How the scripted peer answers one connection: given the request bytes it read and the socket.
Script = Callable[[bytes, socket.socket], None]


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            want = int(line.split(b":")[1])
            while len(body) < want:
                body += conn.recv(65536)
    return data


class Peer:
    """Accepts connections; each is answered by the next script (the last one repeats)."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = list(scripts)
        self.requests: List[bytes] = []
        self.accepted = 0
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            script = self.scripts[min(self.accepted, len(self.scripts) - 1)]
            self.accepted += 1
            threading.Thread(target=self._one, args=(conn, script), daemon=True).start()

    def _one(self, conn: socket.socket, script: Script) -> None:
        with conn:
            try:
                request = _read_request(conn)
                self.requests.append(request)
                script(request, conn)
            except OSError:
                pass

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()


def answer(raw: bytes, close: bool = True) -> Script:
    def script(request: bytes, conn: socket.socket) -> None:
        conn.sendall(raw)
        if not close:
            time.sleep(2)

    return script


def keep_alive_server(raw: bytes) -> Script:
    """Answers every request on the connection until the client closes it."""

    def script(request: bytes, conn: socket.socket) -> None:
        while request:
            conn.sendall(raw)
            request = _read_request(conn)

    return script


def stall(request: bytes, conn: socket.socket) -> None:
    time.sleep(3)


def half_then_stall(request: bytes, conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    time.sleep(3)


def reset(request: bytes, conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close


class Case(NamedTuple):
    name: str
    script: Script
    status: Optional[int] = None
    body: bytes = b""
    error: Optional[Type[Exception]] = None
    match: Optional[str] = None


CASES: List[Case] = [
    Case("content_length", answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), 200, b"ok"),
    Case(
        "chunked",
        answer(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n4\r\n":1}\r\n0\r\n\r\n'),
        200,
        b'{"a":1}',
    ),
    Case("close_delimited", answer(b"HTTP/1.1 200 OK\r\n\r\nuntil close"), 200, b"until close"),
    Case("error_status_returned", answer(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy"), 503, b"busy"),
    Case("redirect_not_followed", answer(b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n"), 302),
    Case(
        "truncated_body",
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
        error=PeerUnavailable,
        match="truncated: 3 of 10",
    ),
    Case("garbage", answer(b"SSH-2.0-OpenSSH\r\n\r\n"), error=PeerUnavailable, match="malformed answer"),
    Case("closed_silently", answer(b""), error=PeerUnavailable, match="without an answer"),
    Case("reset", reset, error=PeerUnavailable),
    Case(
        "oversize_declared",
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"),
        error=PeerError,
        match="larger than 1024",
    ),
    Case("oversize_streamed", answer(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 5000), error=PeerError, match="larger"),
    Case("no_answer_in_time", stall, error=PeerTimeout, match="did not answer"),
    Case("body_stalls", half_then_stall, error=PeerTimeout, match="stalled"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_http_request(case: Case) -> None:
    with Peer(case.script) as peer:
        started = time.monotonic()
        if case.error is not None:
            with pytest.raises(case.error, match=case.match) as caught:
                http_request("GET", peer.url + "/health", timeout=0.6, max_bytes=1024)
            if isinstance(caught.value, PeerUnavailable):
                assert caught.value.sent, "the request reached the peer: a retry could apply a change twice"
        else:
            result = http_request("GET", peer.url + "/health", timeout=0.6, max_bytes=1024)
            assert (result.status, result.body) == (case.status, case.body)
        assert time.monotonic() - started < 2.0, "the timeout bounds the whole call"


def test_refused_is_unavailable_and_not_sent() -> None:
    port = free_port()
    with pytest.raises(PeerUnavailable, match="unreachable") as caught:
        http_request("POST", f"http://127.0.0.1:{port}/v1/load_lora_adapter", body=b"{}", timeout=1)
    assert caught.value.sent is False  # nothing reached the engine: safe to retry
    assert caught.value.status == 503


def test_unknown_host_is_unavailable_and_not_sent() -> None:
    with pytest.raises(PeerUnavailable) as caught:
        http_request("GET", "http://no-such-host.invalid:8000/health", timeout=2)
    assert caught.value.sent is False


def test_tls_handshake_failure_is_not_sent() -> None:
    """An https engine URL pointing at a plain-http peer: the handshake fails before any request byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def plain_http() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            time.sleep(0.5)

    threading.Thread(target=plain_http, daemon=True).start()
    with listener:
        with pytest.raises(PeerUnavailable) as caught:
            http_request("GET", f"https://127.0.0.1:{listener.getsockname()[1]}/health", timeout=2)
    assert caught.value.sent is False


def test_request_on_the_wire() -> None:
    with Peer(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")) as peer:
        http_request(
            "POST",
            peer.url + "/v1/load_lora_adapter?x=1#frag",
            body=b'{"a":1}',
            headers={"Authorization": "Bearer k"},
            timeout=2,
        )
    raw = peer.requests[-1]
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/load_lora_adapter?x=1 HTTP/1.1"
    fields = dict(line.split(b": ", 1) for line in lines[1:])
    assert fields[b"Host"] == f"127.0.0.1:{peer.port}".encode()
    assert fields[b"Content-Length"] == b"7" and body == b'{"a":1}'
    assert fields[b"Content-Type"] == b"application/json"
    assert fields[b"Authorization"] == b"Bearer k"
    assert fields[b"Connection"] == b"close"


@pytest.mark.parametrize(
    "headers",
    [{"X-Evil": "a\r\nInjected: 1"}, {"X-Evil\r\nInjected": "1"}, {"X-Nul": "a\x00b"}],
    ids=["value_crlf", "name_crlf", "value_nul"],
)
def test_header_injection_is_refused(headers: dict) -> None:
    origin = Origin.parse("http://127.0.0.1:8000")
    with pytest.raises(PeerError, match="refusing"):
        request_bytes("GET", origin, "/health", headers, None, keep_alive=False)


@pytest.mark.parametrize("target", ["/a b", "/a\r\nX: 1", "relative", "/é"], ids=["space", "crlf", "relative", "utf8"])
def test_bad_targets_are_refused(target: str) -> None:
    with pytest.raises(PeerError, match="request target"):
        request_bytes("GET", Origin.parse("http://127.0.0.1:8000"), target, {}, None, keep_alive=False)


@pytest.mark.parametrize(
    "url,expected",
    [
        ("http://localhost:8000", Origin(False, "localhost", 8000, "")),
        ("http://127.0.0.1:8000/", Origin(False, "127.0.0.1", 8000, "")),
        ("https://engine.ns.svc/prefix/", Origin(True, "engine.ns.svc", 443, "/prefix")),
        ("http://user:pw@host:81/x", Origin(False, "host", 81, "/x")),
        ("http://[::1]:9000/v1", Origin(False, "::1", 9000, "/v1")),
        ("HTTP://host", Origin(False, "host", 80, "")),
    ],
    ids=["plain", "trailing_slash", "https_prefix", "userinfo_dropped", "ipv6", "upper_scheme"],
)
def test_origin_parse(url: str, expected: Origin) -> None:
    assert Origin.parse(url) == expected


@pytest.mark.parametrize("url", ["ftp://x", "localhost:8000", "http://:80", "http://h:99999", "http://h:x"])
def test_origin_parse_refuses(url: str) -> None:
    with pytest.raises(PeerError):
        Origin.parse(url)


def test_ipv6_authority_round_trips() -> None:
    origin = Origin.parse("http://[::1]:9000")
    assert origin.authority == "[::1]:9000"
    assert Origin.parse("http://h:80").authority == "h"


def test_ascii_hosts_skip_the_idna_codec() -> None:
    assert resolver_host("localhost") == b"localhost"
    assert resolver_host("bücher.example") == "bücher.example"


def test_keep_alive_client_reuses_one_connection() -> None:
    with Peer(keep_alive_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")) as peer:
        client = KeepAliveClient(peer.url)
        for _ in range(5):
            assert client.get("/metrics", {}, timeout=2, max_bytes=100).body == b"ok"
        client.close()
    assert peer.accepted == 1


def test_keep_alive_client_reconnects_when_peer_closes() -> None:
    with Peer(answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")) as peer:
        client = KeepAliveClient(peer.url)
        for _ in range(3):
            assert client.get("/metrics", {}, timeout=2, max_bytes=100).body == b"ok"
    assert peer.accepted == 3


def test_keep_alive_client_retries_a_stale_connection_once() -> None:
    """The peer answered once, kept the connection, then closed it while idle (as uvicorn does)."""

    def once_then_idle_close(request: bytes, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
        time.sleep(0.2)  # then closes, without Connection: close

    with Peer(once_then_idle_close, keep_alive_server(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")) as peer:
        client = KeepAliveClient(peer.url + "/")
        assert client.get("/metrics", {}, timeout=2, max_bytes=100).body == b"first"
        time.sleep(0.4)
        assert client.get("/metrics", {}, timeout=2, max_bytes=100).body == b"second"
        client.close()
    assert peer.accepted == 2


def test_keep_alive_client_does_not_retry_a_timeout() -> None:
    with Peer(stall) as peer:
        client = KeepAliveClient(peer.url)
        with pytest.raises(PeerTimeout):
            client.get("/metrics", {}, timeout=0.3, max_bytes=100)
    assert peer.accepted == 1


def test_keep_alive_client_path_prefix_and_headers() -> None:
    with Peer(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")) as peer:
        client = KeepAliveClient(peer.url + "/engine/")
        client.get("/metrics", {"Accept": "text/plain"}, timeout=2, max_bytes=100)
        client.close()
    raw = peer.requests[-1]
    assert raw.startswith(b"GET /engine/metrics HTTP/1.1\r\n")
    assert b"\r\nAccept: text/plain\r\n" in raw
    assert b"\r\nConnection: keep-alive\r\n" in raw


WIRE = {
    # The client's errors answer as the engine's did before routers were peers: a controller
    # matching on the type or the status sees no change.
    "peer error": (PeerError("x"), 502, "engine_error"),
    "peer unavailable": (PeerUnavailable("x"), 503, "engine_unavailable"),
    "peer timeout": (PeerTimeout("x"), 504, "engine_timeout"),
}


@pytest.mark.parametrize("error, status, kind", WIRE.values(), ids=WIRE.keys())
def test_peer_errors_keep_their_wire_status_and_type(error: PatioError, status: int, kind: str) -> None:
    assert (error.status, error.to_dict()["type"]) == (status, kind)


def test_the_engine_names_are_the_peer_classes() -> None:
    """The scrape and the LoRA manager catch ``EngineUnavailable``/``EngineTimeout``: the client's
    errors must be those very classes, and an engine's own failure is still a peer error."""
    assert errors.EngineUnavailable is PeerUnavailable and errors.EngineTimeout is PeerTimeout
    assert issubclass(errors.EngineError, PeerError)
    assert PeerUnavailable("x").sent is True  # unknown means "may have arrived": never retried
