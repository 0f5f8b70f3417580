"""The HTTP server over real sockets: keep-alive, pipelining, limits, routing errors,
HEAD, shutdown with a request in flight, and resilience to bad clients."""

import asyncio
import json
import socket
import threading
import time

import pytest
from support import RunningPatio, http_call, make_settings, raw_exchange

import patio.app
import patio.lifecycle
from patio.component import Component
from patio.http.types import Request, Response, Route


class EchoComponent(Component):
    """Test-only routes: an echo, a slow handler, one that fails, one management route."""

    name = "test"

    def routes(self):
        return [
            Route("POST", "/test/echo", self.echo),
            Route("GET", "/test/slow", self.slow),
            Route("GET", "/test/boom", self.boom),
            Route("GET", "/test/items/{item}", self.item),
            Route("POST", "/test/manage", self.echo, management=True),
            Route("GET", "/test/big", self.big),
        ]

    async def big(self, request: Request) -> Response:
        """Far more than the socket buffers hold, in a body and a shared tail."""
        size = int(request.query_value("mb") or 4) * 1024 * 1024
        return Response(body=b"a" * 1000, content_type="text/plain", shared_tail=(b"b" * size,))

    async def echo(self, request: Request) -> Response:
        return Response(body=request.body, content_type="application/octet-stream")

    async def slow(self, request: Request) -> Response:
        await asyncio.sleep(float(request.query_value("s") or 1.0))
        return Response.json({"slow": "done"})

    async def boom(self, request: Request) -> Response:
        raise RuntimeError("handler bug")

    async def item(self, request: Request) -> Response:
        return Response.json({"item": request.path_params["item"]})


def build_test_component(context):
    return EchoComponent()


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setattr(
        patio.lifecycle,
        "build_app",
        lambda settings, registry=None: patio.app.build_app(settings, registry, (build_test_component,)),
    )

    def start(*args):
        return RunningPatio(
            make_settings(
                ["--scrape-engine-metrics", "false", *args], {"INFERENCE_ENGINE_ENDPOINT": "http://127.0.0.1:9"}
            )
        )

    return start


def responses(data: bytes):
    """Split raw bytes into (status, headers, body) answers."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        out.append((status, headers, rest[:length]))
        data = rest[length:]
    return out


def assert_error_shape(body: bytes, status: int):
    error = json.loads(body)
    assert set(error) == {"object", "type", "message", "param", "code"}
    assert error["object"] == "error" and error["code"] == status and error["message"]


def test_keep_alive_and_pipelining(server):
    with server() as patio:
        data = b"".join(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" for _ in range(5))
        data += b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answers = responses(raw_exchange(patio.port, data))
        assert [a[0] for a in answers] == [200] * 6
        assert [a[1]["connection"] for a in answers] == ["keep-alive"] * 5 + ["close"]


def test_keep_alive_sequential_on_one_socket(server):
    with server() as patio, socket.create_connection(("127.0.0.1", patio.port), timeout=5) as sock:
        for i in range(3):
            body = f"n{i}".encode()
            sock.sendall(b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            reply = b""
            while not reply.endswith(body):
                reply += sock.recv(4096)
            assert reply.startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize(
    "args,request_bytes,status",
    [
        (["--max-header-bytes", "512"], b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 600 + b"\r\n\r\n", 431),
        (
            ["--max-body-bytes", "10"],
            b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world",
            413,
        ),
        ([], b"POST /test/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
        ([], b"NOT HTTP AT ALL\r\n\r\n", 400),
        ([], b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ],
    ids=["431_headers", "413_body", "411_chunked", "400_garbage", "505_version"],
)
def test_limits_and_protocol_errors_answer_json_and_close(server, args, request_bytes, status):
    with server(*args) as patio:
        answers = responses(raw_exchange(patio.port, request_bytes))
        assert len(answers) == 1 and answers[0][0] == status
        assert answers[0][1]["connection"] == "close"
        assert_error_shape(answers[0][2], status)
        assert http_call("GET", patio.url + "/health")[0] == 200


def test_slow_client_gets_408(server):
    with server("--request-timeout", "0.5") as patio, socket.create_connection(("127.0.0.1", patio.port)) as sock:
        sock.settimeout(5)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finishes the headers
        started = time.monotonic()
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        assert 0.4 < time.monotonic() - started < 3
        assert responses(data)[0][0] == 408


def test_slow_body_gets_408(server):
    with server("--request-timeout", "0.5") as patio, socket.create_connection(("127.0.0.1", patio.port)) as sock:
        sock.settimeout(5)
        sock.sendall(b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        data = sock.recv(4096)
        assert responses(data)[0][0] == 408


def test_idle_keep_alive_connection_is_closed_quietly(server):
    with server("--idle-timeout", "0.3") as patio, socket.create_connection(("127.0.0.1", patio.port)) as sock:
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(4096) == b""
        assert time.monotonic() - started < 2


def test_404_and_405_with_allow(server):
    with server() as patio:
        status, _, body = http_call("GET", patio.url + "/nope")
        assert status == 404
        assert_error_shape(body, 404)
        status, headers, body = http_call("DELETE", patio.url + "/health")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        assert_error_shape(body, 405)
        status, _, body = http_call("GET", patio.url + "/test/items/abc")
        assert json.loads(body) == {"item": "abc"}


def test_head_for_every_get(server):
    with server() as patio:
        for path in ("/", "/health", "/healthz", "/livez", "/metrics", "/test/items/x"):
            get_status, get_headers, get_body = http_call("GET", patio.url + path)
            head_status, head_headers, head_body = http_call("HEAD", patio.url + path)
            assert head_status == get_status and head_body == b""
            assert head_headers["content-type"] == get_headers["content-type"]
            if path not in ("/metrics", "/"):  # metrics and the banner's uptime change between calls
                assert head_headers["content-length"] == str(len(get_body))


def test_expect_100_continue(server):
    with server() as patio, socket.create_connection(("127.0.0.1", patio.port), timeout=5) as sock:
        sock.sendall(b"POST /test/echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"data")
        reply = b""
        while not reply.endswith(b"data"):
            reply += sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200 OK")


def test_handler_exception_is_500_with_request_id_and_server_survives(server, caplog):
    with server() as patio:
        status, headers, body = http_call("GET", patio.url + "/test/boom")
        assert status == 500
        assert_error_shape(body, 500)
        request_id = headers["x-request-id"]
        assert request_id in json.loads(body)["message"]
        assert any(request_id in r.getMessage() for r in caplog.records)
        assert http_call("GET", patio.url + "/health")[0] == 200


def test_concurrent_clients(server):
    with server() as patio:
        failures = []

        def client():
            try:
                for _ in range(10):
                    assert http_call("GET", patio.url + "/health")[0] == 200
            except Exception as exc:  # collected for the assertion below
                failures.append(exc)

        threads = [threading.Thread(target=client) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []


def test_max_connections_answers_503_when_every_connection_is_busy(server):
    # Idle connections are evicted at the limit (tests/test_hardening_http.py); busy ones are not.
    with server("--max-connections", "2") as patio:
        held = [socket.create_connection(("127.0.0.1", patio.port)) for _ in range(2)]
        try:
            for sock in held:
                sock.sendall(b"GET /test/slow?s=1.5 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)
            answers = responses(raw_exchange(patio.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"))
            assert answers[0][0] == 503
            assert_error_shape(answers[0][2], 503)
        finally:
            for sock in held:
                sock.close()
        time.sleep(1.6)  # the slow handlers finish; their connections go
        assert http_call("GET", patio.url + "/health")[0] == 200


def test_graceful_shutdown_lets_in_flight_request_finish(server):
    patio = server("--drain-timeout", "3").__enter__()
    result = {}

    def slow_client():
        result["answer"] = http_call("GET", patio.url + "/test/slow?s=1", timeout=10)

    thread = threading.Thread(target=slow_client)
    thread.start()
    time.sleep(0.3)
    port = patio.port
    stopper = threading.Thread(target=patio.stop)
    stopper.start()
    thread.join(10)
    stopper.join(10)
    status, headers, body = result["answer"]
    assert status == 200 and json.loads(body) == {"slow": "done"}
    assert headers["connection"] == "close"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


BAD_CLIENTS = [
    ("disconnect_mid_headers", b"GET /health HTTP/1.1\r\nHo"),
    ("disconnect_mid_body", b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"),
    ("binary_garbage", bytes(range(256)) * 4),
    ("tls_client_hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64),
    ("only_newlines", b"\r\n" * 100),
    ("huge_single_line", b"GET /" + b"a" * 100000),
]


@pytest.mark.parametrize("data", [c[1] for c in BAD_CLIENTS], ids=[c[0] for c in BAD_CLIENTS])
def test_bad_clients_never_take_the_server_down(server, data):
    with server() as patio:
        with socket.create_connection(("127.0.0.1", patio.port), timeout=2) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                sock.recv(65536)
            except OSError:
                pass
        assert http_call("GET", patio.url + "/health")[0] == 200


def test_management_routes_need_the_api_key(server):
    with server("--api-key", "k") as patio:
        assert http_call("POST", patio.url + "/test/manage", b"x")[0] == 401
        status, headers, body = http_call("POST", patio.url + "/test/manage", b"x", {"Authorization": "Bearer bad"})
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert_error_shape(body, 401)
        assert http_call("POST", patio.url + "/test/manage", b"x", {"Authorization": "Bearer k"})[0] == 200
        for path in ("/health", "/ready", "/metrics", "/"):
            assert http_call("GET", patio.url + path)[0] in (200, 503)


def test_the_server_knows_nothing_of_the_application():
    """HttpServer is given a handler, limits and a registry: nothing under patio/http reaches the
    component contracts, the assembly or the settings composer."""
    from test_import_graph import import_graph

    graph = import_graph()
    for module in (m for m in graph if m.startswith("patio.http.")):
        seen, todo = set(), [module]
        while todo:
            for dep in graph[todo.pop()]:
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        assert not seen & {"patio.component", "patio.app", "patio.config"}, f"{module} reaches {sorted(seen)}"


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return data
        data += chunk


def test_a_large_answer_before_close_arrives_whole_to_a_slow_reader(server):
    """Connection: close after an answer larger than the socket buffers: the connection is
    closed once the answer is flushed (bounded by --write-timeout), never cut short."""
    with server() as patio, socket.create_connection(("127.0.0.1", patio.port), timeout=10) as sock:
        sock.sendall(b"GET /test/big?mb=8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        time.sleep(0.5)  # the client is slow to start reading
        ((status, headers, body),) = responses(_read_all(sock))
        assert status == 200 and headers["connection"] == "close"
        assert len(body) == int(headers["content-length"]) == 1000 + 8 * 1024 * 1024


def test_requests_sent_before_the_client_half_closes_are_all_answered(server):
    """A client that sends its requests and shuts its sending side (curl --no-keepalive, a
    script) still reads every answer, the one behind a slow handler included."""
    with server() as patio, socket.create_connection(("127.0.0.1", patio.port), timeout=10) as sock:
        sock.sendall(b"GET /test/slow?s=0.3 HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        answers = responses(_read_all(sock))
        assert [a[0] for a in answers] == [200, 200]
        assert json.loads(answers[0][2]) == {"slow": "done"} and json.loads(answers[1][2]) == {"status": "ok"}


def test_a_client_gone_mid_request_frees_its_slot_when_its_handler_ends(server):
    """The handler is not cancelled (it may be changing state) and holds the slot until it ends,
    as before; then the connection is forgotten."""
    with server() as patio:
        with socket.create_connection(("127.0.0.1", patio.port)) as sock:
            sock.sendall(b"GET /test/slow?s=0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.2)
        time.sleep(0.1)

        async def connections():
            return len(patio.running.server.connections)

        assert patio.call(connections) == 1  # gone, its handler still runs
        deadline = time.monotonic() + 10
        while patio.call(connections) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert patio.call(connections) == 0
        assert http_call("GET", patio.url + "/health")[0] == 200
