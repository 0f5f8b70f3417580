"""Who is closed at --max-connections, and how an error answer is closed.

Found by the soak (tests/test_soak.py) on a slow CI machine: a LoRA request on a fresh connection
got ``RemoteDisconnected``.  Its bytes had arrived, but the event loop, busy rendering a 1 MB
scrape, had not parsed them yet; the connection still counted as "new and silent", and an
idle-flood newcomer evicted it.  A connection that has spoken is never evicted now.

And an error answer written just before close (503 at the limit, 413, 408) could be destroyed
by the reset the kernel sends when unread input is left behind: the socket is half-closed and
lingers now, reading and dropping what the client still sends (bounded).
"""

import asyncio
import http.client
import socket
import time
from typing import List, NamedTuple

import pytest
from support import RunningPatio, make_settings

from patio.http import admission
from patio.http import connection as http_connection
from patio.http.connection import HttpConnection

PROBE = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
GRACE = admission.SILENCE_GRACE


class Case(NamedTuple):
    state: str
    since_ago: float  # seconds since it entered its state
    arrived: int  # bytes received from the client
    parsed: int  # bytes of those its task has taken in
    evictable: bool


CASES = {
    "new, silent past the grace": Case(admission.NEW, GRACE + 1, 0, 0, True),
    "new, silent within the grace": Case(admission.NEW, GRACE / 5, 0, 0, False),
    "new, request arrived but not parsed yet": Case(admission.NEW, GRACE + 1, 36, 0, False),
    "idle since its last answer": Case(admission.IDLE, 1.0, 36, 36, True),
    "idle, next request arrived": Case(admission.IDLE, 1.0, 72, 36, False),
    "reading, everything sent so far parsed": Case(admission.READING, 0.01, 10, 10, True),
    "reading, more arrived, not parsed yet": Case(admission.READING, 5.0, 11, 10, False),
    "busy": Case(admission.BUSY, 10.0, 36, 36, False),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_eviction_policy(case: Case) -> None:
    now = time.monotonic()
    conn = admission.Slot()
    conn.state = case.state
    conn.since = now - case.since_ago
    conn.arrived, conn.parsed = case.arrived, case.parsed
    assert conn.evictable(now) is case.evictable


def _patio(*args: str) -> RunningPatio:
    env = {"INFERENCE_ENGINE_ENDPOINT": "http://127.0.0.1:9"}
    return RunningPatio(make_settings(["--scrape-engine-metrics", "false", *args], env))


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else -1


def _read_answer(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class _HeldFirstConnection:
    """The first connection that receives bytes does not parse them until let go: a loop late
    to parse what arrived."""

    def __init__(self, patio: RunningPatio, monkeypatch: pytest.MonkeyPatch) -> None:
        self.patio = patio
        self.server = patio.running.server
        self.held: List[HttpConnection] = []
        original = HttpConnection._advance

        def late(conn: HttpConnection) -> None:
            if not self.held:
                self.held.append(conn)
            if conn is self.held[0] and not self.released:
                return  # arrived, not parsed
            original(conn)

        self.released = False
        self._original = original
        monkeypatch.setattr(HttpConnection, "_advance", late)

    def wait_arrived(self) -> None:
        deadline = time.monotonic() + 10
        while not (self.held and self.held[0].arrived) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.held and self.held[0].arrived, "the request never reached the server"

    def let_go(self) -> None:
        def resume() -> None:
            self.released = True
            self._original(self.held[0])

        self.patio.loop.call_soon_threadsafe(resume)


def test_a_request_that_arrived_is_answered_even_when_the_loop_is_late_to_parse_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The soak's lost request, made deterministic."""
    with _patio("--max-connections", "1") as patio:
        late = _HeldFirstConnection(patio, monkeypatch)
        with socket.create_connection(("127.0.0.1", patio.port)) as spoken:
            spoken.sendall(PROBE)
            late.wait_arrived()
            time.sleep(GRACE + 0.2)  # "new" past the grace, by the clock
            with socket.create_connection(("127.0.0.1", patio.port)) as newcomer:
                newcomer.sendall(PROBE)
                assert _status(_read_answer(newcomer)) == 503  # nobody to evict: refused, with an answer
            late.let_go()
            assert _status(_read_answer(spoken)) == 200


def _post_large(port: int, size: int) -> int:
    """http.client as a controller uses it: send the whole body, then read the answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", "/v1/load_lora_adapter", body=b"{" + b" " * size + b"}")
        return conn.getresponse().status
    finally:
        conn.close()


def test_refused_connection_gets_its_503_even_while_still_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing with unread input resets the connection: the client failed on its send, never read the 503."""
    with _patio("--max-connections", "1") as patio:
        late = _HeldFirstConnection(patio, monkeypatch)
        with socket.create_connection(("127.0.0.1", patio.port)) as spoken:
            spoken.sendall(PROBE)
            late.wait_arrived()
            for _ in range(2):
                assert _post_large(patio.port, 20_000_000) == 503
            late.let_go()
            assert _status(_read_answer(spoken)) == 200


def test_413_reaches_a_client_that_keeps_sending() -> None:
    """An oversized body is answered 413 at its head; the client is still sending its 20 MB."""
    with _patio("--max-body-bytes", "1024") as patio:
        assert _post_large(patio.port, 20_000_000) == 413
        with socket.create_connection(("127.0.0.1", patio.port)) as sock:  # and the server is fine afterwards
            sock.sendall(PROBE)
            assert _status(_read_answer(sock)) == 200


def test_shutdown_cuts_a_lingering_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused connection is outside the connection table; drain must still cut its linger
    (else the loop closes under it: "Event loop is closed" from a pending task, seen on CI)."""
    monkeypatch.setattr(http_connection, "LINGER_SECONDS", 60.0)  # only a cancellation can end it soon
    with _patio("--max-connections", "1") as patio:
        late = _HeldFirstConnection(patio, monkeypatch)
        server = late.server
        with socket.create_connection(("127.0.0.1", patio.port)) as spoken:
            spoken.sendall(PROBE)
            late.wait_arrived()
            with socket.create_connection(("127.0.0.1", patio.port)) as refused:
                refused.sendall(PROBE)  # and keeps the socket open: the server lingers on it
                assert _status(_read_answer(refused)) == 503
                assert server.refusing

                async def drained() -> bool:
                    await server.drain(0.1)
                    for _ in range(50):
                        if not server.refusing:
                            return True
                        await asyncio.sleep(0.1)
                    return False

                assert patio.call(drained)
                refused.settimeout(10)
                assert refused.recv(65536) == b""  # closed by the server, not left for 60 s
            late.let_go()
