"""One connection on a recording transport (no socket): what it writes, when, and in what
state it waits.  Deterministic: the loop turns are counted, never timed."""

import asyncio
from typing import Any, List, Optional, Tuple

from patio.core_settings import Limits
from patio.http.admission import BUSY, IDLE, NEW, READING
from patio.http.connection import HttpConnection
from patio.http.dispatch import Dispatcher
from patio.http.output import PIECES_PER_TURN, WRITE_CHUNK
from patio.http.request_parser import ParsedRequest
from patio.http.server_state import ServerState
from patio.http.types import Request, Response, Route
from patio.metrics.registry import Registry

BIG = 40 * WRITE_CHUNK + 1


class Recorder(asyncio.Transport):
    """Takes everything at once, as a kernel with room does; remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: List[bytes] = []
        self.closed = False

    def set_write_buffer_limits(self, high: Optional[int] = None, low: Optional[int] = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _big(request: Request) -> Response:
    return Response(body=b"a" * 10, content_type="text/plain", shared_tail=(b"b" * BIG,))


async def _small(request: Request) -> Response:
    return Response(body=b'{"status":"ok"}')


async def _slow(request: Request) -> Response:
    await asyncio.sleep(0)
    return Response(body=b"{}")


ROUTES = [Route("GET", "/big", _big), Route("GET", "/small", _small), Route("GET", "/slow", _slow)]


def _shared(loop: asyncio.AbstractEventLoop) -> ServerState:
    registry = Registry()
    counter = registry.counter("t_total", "t", ("reason",))
    return ServerState(Dispatcher(ROUTES, None, registry), Limits(), loop, counter, counter, counter)


def _connection(
    loop: asyncio.AbstractEventLoop, shared: Optional[ServerState] = None
) -> Tuple[HttpConnection, Recorder]:
    conn = HttpConnection(shared or _shared(loop))
    transport = Recorder()
    conn.connection_made(transport)
    return conn, transport


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


async def _turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def test_a_probe_is_answered_with_one_write_in_the_callback_that_read_it() -> None:
    async def main() -> None:
        conn, transport = _connection(asyncio.get_running_loop())
        assert conn.state == NEW
        conn.data_received(_get("/small"))
        assert len(transport.writes) == 1 and transport.writes[0].endswith(b'\r\n\r\n{"status":"ok"}')
        assert conn.state == IDLE  # never BUSY: nothing else ran while it was answered

    asyncio.run(main())


def test_large_answers_share_a_bounded_amount_of_writing_per_loop_turn() -> None:
    """However many clients download a large answer (or stall while their kernel still takes
    bytes), each turn of the loop writes at most PIECES_PER_TURN pieces, round-robin: a probe
    waits behind that much, not behind every download."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        shared = _shared(loop)  # one server
        connections = [_connection(loop, shared) for _ in range(3)]
        for conn, _ in connections:
            conn.data_received(_get("/big"))
            assert conn.state == BUSY
        assert [len(t.writes) for _, t in connections] == [1, 1, 1]  # the heads, at once
        written = [1, 1, 1]
        for _ in range(200):
            await _turns(1)
            now = [len(t.writes) for _, t in connections]
            grew = [n - w for n, w in zip(now, written)]
            assert sum(grew) <= PIECES_PER_TURN, grew
            if all(conn.state == BUSY for conn, _ in connections):
                assert max(grew) - min(grew) <= 1, grew  # round-robin
            written = now
        for conn, transport in connections:
            assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and transport.writes[0].endswith(b"\r\n\r\n")
            assert b"".join(transport.writes[1:]) == b"a" * 10 + b"b" * BIG
            assert all(len(piece) <= WRITE_CHUNK for piece in transport.writes[1:])
            assert conn.state == IDLE

    asyncio.run(main())


def test_pipelined_requests_are_answered_in_order_each_after_the_one_before() -> None:
    async def main() -> None:
        conn, transport = _connection(asyncio.get_running_loop())
        conn.data_received(_get("/slow") + _get("/small") + _get("/big") + _get("/small") + b"GET /sm")
        assert transport.writes == []  # the first waits on its handler: nothing behind it is answered
        await _turns(200)
        answers = b"".join(transport.writes)
        assert answers.count(b"HTTP/1.1 200 OK") == 4
        assert answers.index(b"{}") < answers.index(b'{"status":"ok"}') < answers.index(b"aaaaaaaaaa")
        assert answers.endswith(b'{"status":"ok"}')
        assert conn.state == READING  # the fifth request is on its way

    asyncio.run(main())


def test_a_request_that_cannot_be_read_ends_the_connection_with_its_answer() -> None:
    async def main() -> None:
        conn, transport = _connection(asyncio.get_running_loop())
        conn.data_received(b"GARBAGE\r\n\r\n")
        assert transport.writes[0].startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"Connection: close" in transport.writes[0]
        conn.data_received(_get("/small"))  # what follows is dropped, never answered
        assert len(transport.writes) == 1

    asyncio.run(main())


def test_the_connection_is_handed_the_request_as_parsed() -> None:
    seen: List[ParsedRequest] = []

    class Spy(Dispatcher):
        async def __call__(self, parsed: ParsedRequest, client: str) -> Tuple[Response, str]:
            seen.append(parsed)
            return await super().__call__(parsed, client)

    async def main() -> None:
        registry = Registry()
        counter = registry.counter("t_total", "t", ("reason",))
        shared = ServerState(
            Spy(ROUTES, None, registry), Limits(), asyncio.get_running_loop(), counter, counter, counter
        )
        conn = HttpConnection(shared)
        conn.connection_made(Recorder())
        conn.data_received(_get("/small") + _get("/small"))
        assert [p.target for p in seen] == ["/small", "/small"]
        assert seen[0] is seen[1]  # the same head, remembered: parsed once

    asyncio.run(main())
