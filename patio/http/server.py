"""The asyncio HTTP/1.1 server: the only module that touches sockets.

It moves bytes between the connection and ``RequestParser``, dispatches
requests through the ``RouteTable``, enforces the named limits (431/413 from
the parser, 408 for slow clients, 503 past ``max_connections``), checks the
API key on management routes, records request metrics by route template and
turns every failure into the JSON error shape (unexpected exceptions become a
500 carrying the request id, never a dropped connection).
"""

import asyncio
import logging
import os
import time
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Set, Tuple

try:  # hmac.compare_digest's own C core; importing hmac would load OpenSSL (3+ MB resident) for one function
    from _operator import _compare_digest as compare_digest
except ImportError:  # pragma: no cover - an interpreter without _operator
    from hmac import compare_digest  # type: ignore[no-redef]
from urllib.parse import parse_qs, unquote, urlsplit

from patio.component import App
from patio.errors import InternalError, PatioError, RequestTimeout, ServiceUnavailable, Unauthorized
from patio.http.request_parser import ParsedRequest, RequestParser
from patio.http.responses import DateCache, error_response, serialize
from patio.http.routing import UNMATCHED, RouteTable
from patio.http.types import Request, Response

log = logging.getLogger("patio.http")

READ_CHUNK = 64 * 1024  # bytes per socket read; the parser enforces the real limits
# Method label values; anything else is counted as "other" (bounded cardinality).
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


# Output is handed to the transport in pieces of this size, and the next piece only once the
# transport's buffer is below WRITE_BUFFER_HIGH: a client that does not read holds at most
# WRITE_CHUNK + WRITE_BUFFER_HIGH bytes of output of its own (plus a reference to a shared
# response body, e.g. the engine's share of /metrics), never a whole copy of a large answer.
WRITE_CHUNK = 16 * 1024
WRITE_BUFFER_HIGH = 16 * 1024
# Bytes of buffered output per connection, at most (the bound stated in docs and tested).
MAX_BUFFERED_OUTPUT = WRITE_CHUNK + WRITE_BUFFER_HIGH
# Refusals and write timeouts are logged at most once per this many seconds (with a count), so a
# flood cannot flood the log too.
LOG_EVERY = 10.0
# patio_http_connections_refused_total{reason} values.
REFUSE_REASONS = ("max_connections", "shutting_down", "first_byte_timeout")

# Connection states.  At the connection limit, a connection in one of EVICTABLE is closed to make
# room for the new one, in this order and oldest first: it has no answer owed to it.  A
# connection whose request is being handled or whose answer is being written ("busy") is never
# evicted, and neither is one holding bytes that arrived but are not parsed yet (the loop may be
# late to read them: the client has spoken, and cutting it would lose its request unanswered).
NEW, IDLE, READING, BUSY = "new", "idle", "reading", "busy"
EVICTABLE = (NEW, IDLE, READING)
# A connection that has said nothing yet is evictable only after this long: a client that just
# connected is about to send its request (a burst of new connections must not evict it).  A
# newcomer that finds no connection to evict waits up to this long for one to become evictable
# before it is refused; at most MAX_ADMISSION_WAITERS wait at once (the rest are refused at once).
SILENCE_GRACE = 0.25
MAX_ADMISSION_WAITERS = 64
# Candidates looked at per state for one eviction: connections with unparsed bytes are skipped,
# and a crowd of them must not make every newcomer scan every connection.
MAX_EVICTION_SCAN = 64
# A connection closed with an error answer (503 at the limit, 408, 413, 431) is half-closed and
# what the client still sends is read and dropped, up to these bounds, before the socket is
# closed: closing with unread input makes the kernel reset the connection, and a client still
# sending its body (curl, http.client, a controller uploading) then fails on its send and never
# reads the answer.  At most MAX_LINGERING connections linger at once; past that, or past the
# bounds, the socket is closed as it is.  (nginx: lingering_close, bounded by time.)
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024 * 1024
MAX_LINGERING = 64


class _Connection:
    __slots__ = ("arrived", "parsed", "since", "state", "task", "writer")
    writer: asyncio.StreamWriter  # set when asyncio hands the connection over, before it is tracked

    def __init__(self) -> None:
        self.task: Optional[asyncio.Task[None]] = None
        self.state = NEW
        self.since = time.monotonic()  # when it entered its state
        self.arrived = 0  # bytes received from the client (counted as the transport hands them over)
        self.parsed = 0  # bytes of those the connection's task has taken in

    @property
    def busy(self) -> bool:
        return self.state == BUSY

    def evictable(self, now: float) -> bool:
        """Owes nothing: not busy, nothing unparsed, and if new, silent past SILENCE_GRACE."""
        if self.state not in EVICTABLE or self.arrived > self.parsed:
            return False
        return self.state != NEW or now - self.since >= SILENCE_GRACE


class _Protocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, counting bytes as they arrive (before the connection's task reads them)."""

    def __init__(self, reader: asyncio.StreamReader, conn: _Connection, server: "HttpServer") -> None:
        super().__init__(reader, lambda r, w: server._on_connection(r, w, conn))
        self._conn = conn

    def data_received(self, data: bytes) -> None:
        self._conn.arrived += len(data)
        super().data_received(data)


class _ThrottledLog:
    """A warning that repeats at most once per ``LOG_EVERY`` seconds, with the count in between."""

    def __init__(self, message: str) -> None:
        self.message = message
        self._last = -LOG_EVERY
        self._suppressed = 0

    def emit(self, detail: str) -> None:
        now = time.monotonic()
        if now - self._last < LOG_EVERY:
            self._suppressed += 1
            return
        suppressed, self._suppressed, self._last = self._suppressed, 0, now
        extra = f" ({suppressed} more since the last report)" if suppressed else ""
        log.warning("%s: %s%s", self.message, detail, extra)


class HttpServer:
    def __init__(self, app: App) -> None:
        self.app = app
        self.context = app.context
        core = app.context.core
        self.limits = core.limits
        self.api_key = core.api_key
        self.router = RouteTable(app.routes())
        self._dates = DateCache()
        self._connections: Set[_Connection] = set()
        # Evictable connections by state, oldest first (dicts keep insertion order).
        self._waiting: Dict[str, "OrderedDict[_Connection, None]"] = {state: OrderedDict() for state in EVICTABLE}
        self._server: Optional[asyncio.AbstractServer] = None
        self._closing = False
        self._admission_waiters = 0
        self._lingering = 0
        # Refused connections being answered (outside _connections; they may linger), cut at drain:
        # the socket is aborted, not only the task cancelled (asyncio.wait_for before 3.12 can
        # swallow a cancellation that arrives as its inner future completes).
        self._refusing: Dict["asyncio.Task[None]", asyncio.StreamWriter] = {}
        registry = app.context.registry
        self._requests = registry.counter(
            "patio_http_requests_total", "HTTP requests answered, by route template.", ("method", "route", "code")
        )
        self._duration = registry.histogram(
            "patio_http_request_duration_seconds",
            "Time to answer HTTP requests, by route template.",
            ("method", "route"),
        )
        registry.gauge("patio_http_connections", "Open client connections.", func=lambda: float(len(self._connections)))
        self._refused = registry.counter(
            "patio_http_connections_refused_total",
            "Client connections closed without an answer or with a 503, by reason.",
            ("reason",),
        )
        for reason in REFUSE_REASONS:
            self._refused.inc(reason, amount=0.0)
        self._evicted = registry.counter(
            "patio_http_connections_evicted_total",
            "Connections without a request in progress closed to admit a new one at --max-connections.",
        )
        self._write_timeouts = registry.counter(
            "patio_http_write_timeouts_total", "Responses not written within --write-timeout (connection cut)."
        )
        self._refusal_log = _ThrottledLog("refused client connections")
        self._eviction_log = _ThrottledLog("evicted connections at the connection limit")
        self._write_log = _ThrottledLog("cut connections that did not read their answer")

    @property
    def port(self) -> int:
        sockets = getattr(self._server, "sockets", None)
        assert sockets, "server not started"
        return int(sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        def protocol() -> _Protocol:  # what asyncio.start_server builds, plus the arrival note
            return _Protocol(asyncio.StreamReader(limit=READ_CHUNK), _Connection(), self)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(protocol, host, port, backlog=1024)

    def close_listener(self) -> None:
        """Stop accepting connections; idle keep-alive connections are closed, busy ones finish."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            if not conn.busy and conn.task is not None:
                conn.task.cancel()

    async def drain(self, timeout: float) -> None:
        """Wait for in-flight requests, at most ``timeout`` seconds; then cut what is left."""
        deadline = time.monotonic() + timeout
        while any(c.busy for c in self._connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self._connections):
            _abort(conn.writer)  # as below: a swallowed cancellation must not keep it open
            if conn.task is not None:
                conn.task.cancel()
        for task, writer in list(self._refusing.items()):
            _abort(writer)
            task.cancel()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass

    def _set_state(self, conn: _Connection, state: str) -> None:
        waiting = self._waiting.get(conn.state)
        if waiting is not None:
            waiting.pop(conn, None)
        conn.state = state
        conn.since = time.monotonic()
        waiting = self._waiting.get(state)
        if waiting is not None:
            waiting[conn] = None

    def _forget(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        waiting = self._waiting.get(conn.state)
        if waiting is not None:
            waiting.pop(conn, None)

    def _evict_one(self) -> bool:
        """Close the oldest connection that owes nothing (silent new, idle, then mid-request)."""
        now = time.monotonic()
        for state in EVICTABLE:
            waiting = self._waiting[state]
            for scanned, victim in enumerate(waiting):
                if scanned >= MAX_EVICTION_SCAN:
                    break
                if not victim.evictable(now):
                    if state == NEW and now - victim.since < SILENCE_GRACE:
                        break  # oldest first: the rest are younger still
                    continue  # its request is waiting to be parsed
                del waiting[victim]
                self._connections.discard(victim)
                _abort(victim.writer)
                if victim.task is not None:
                    victim.task.cancel()
                self._evicted.inc()
                self._eviction_log.emit(f"closed a {state} connection (limit {self.limits.max_connections})")
                return True
        return False

    async def _admit(self) -> bool:
        """Room for one more connection: now, by evicting one, or within SILENCE_GRACE."""
        limit = self.limits.max_connections
        if len(self._connections) < limit or self._evict_one():
            return True
        if self._admission_waiters >= MAX_ADMISSION_WAITERS:
            return False
        self._admission_waiters += 1
        try:
            deadline = time.monotonic() + SILENCE_GRACE
            while time.monotonic() < deadline and not self._closing:
                await asyncio.sleep(SILENCE_GRACE / 5)
                if len(self._connections) < limit or self._evict_one():
                    return True
            return False
        finally:
            self._admission_waiters -= 1

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection
    ) -> None:
        conn.writer = writer
        conn.task = asyncio.current_task()
        # Bounded output per connection (see WRITE_CHUNK); low water 0: drain() returns once the
        # transport has handed everything to the kernel.
        writer.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH, low=0)
        peer = writer.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""
        if self._closing or not await self._admit():
            reason = "shutting_down" if self._closing else "max_connections"
            await self._refuse(reader, writer, reason, client)
            return
        self._connections.add(conn)
        self._set_state(conn, NEW)
        try:
            await self._serve_connection(reader, writer, conn, client)
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        except Exception:  # never let one connection's failure escape into the loop
            log.exception("connection handler failed")
        finally:
            self._forget(conn)
            _close(writer)

    async def _refuse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reason: str, client: str
    ) -> None:
        self._refused.inc(reason)
        detail = "shutting down" if reason == "shutting_down" else f"more than {self.limits.max_connections} busy"
        self._refusal_log.emit(f"{client or 'a client'}: {detail}")
        task = asyncio.current_task()
        assert task is not None
        self._refusing[task] = writer
        try:
            await self._answer_and_close(reader, writer, ServiceUnavailable(f"server busy: {detail}"), 1.0)
        finally:
            self._refusing.pop(task, None)
            _close(writer)

    async def _answer_and_close(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, error: PatioError, timeout: float
    ) -> None:
        """Write an error answer, then half-close and drop what the client still sends (see LINGER_*)."""
        writer.write(serialize(error_response(error), keep_alive=False, head_only=False, date=self._dates.get()))
        try:
            await asyncio.wait_for(writer.drain(), timeout=timeout)
            if self._lingering >= MAX_LINGERING or not writer.can_write_eof():
                return
            writer.write_eof()
            self._lingering += 1
            try:
                await asyncio.wait_for(_discard(reader, LINGER_BYTES), timeout=LINGER_SECONDS)
            finally:
                self._lingering -= 1
        except (OSError, asyncio.TimeoutError, asyncio.CancelledError):
            pass

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection, client: str
    ) -> None:
        parser = RequestParser(self.limits.max_header_bytes, self.limits.max_body_bytes)
        request_deadline: Optional[float] = None
        continued = False
        while True:
            try:
                parsed = parser.next_request()
            except PatioError as exc:
                await self._send_error_and_close(reader, writer, exc)
                return
            if parsed is None:
                if parser.in_progress:
                    if conn.state != READING:
                        self._set_state(conn, READING)
                    if request_deadline is None:
                        request_deadline = time.monotonic() + self.limits.request_timeout
                    head = parser.head
                    if head is not None and head.expect_continue and not continued:
                        writer.write(_CONTINUE)  # RFC 9110 §10.1.1: curl waits for it before a large body
                        continued = True
                    timeout = request_deadline - time.monotonic()
                elif conn.state == NEW:
                    timeout = min(self.limits.first_byte_timeout, self.limits.idle_timeout)
                else:
                    if self._closing:
                        return
                    if conn.state != IDLE:
                        self._set_state(conn, IDLE)
                    timeout = self.limits.idle_timeout
                try:
                    data = await asyncio.wait_for(reader.read(READ_CHUNK), timeout=max(timeout, 0.0))
                except asyncio.TimeoutError:
                    if parser.in_progress:
                        await self._send_error_and_close(
                            reader,
                            writer,
                            RequestTimeout(f"request not received within {self.limits.request_timeout:g}s"),
                        )
                    elif conn.state == NEW:
                        self._refused.inc("first_byte_timeout")
                        self._refusal_log.emit(
                            f"{client or 'a client'} sent nothing within {self.limits.first_byte_timeout:g}s"
                        )
                    return
                if not data:
                    return  # client closed (mid-request or idle): nothing to answer
                conn.parsed += len(data)
                if conn.state == NEW:
                    self._set_state(conn, IDLE)
                parser.feed(data)
                continue
            request_deadline = None
            continued = False
            self._set_state(conn, BUSY)
            head_bytes, parts, keep_alive = await self._respond(parsed, client)
            if not await self._write(writer, head_bytes, parts, client):
                return
            if not keep_alive:
                return
            # The next pipelined request (already buffered in the parser, if any) is handled only
            # now that this answer has been handed over: answers never pile up in memory.
            self._set_state(conn, IDLE)

    async def _write(self, writer: asyncio.StreamWriter, head: bytes, parts: Sequence[bytes], client: str) -> bool:
        """Write one answer in bounded pieces within ``write_timeout``; False if the client was cut off."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.write_timeout
        try:
            writer.write(head)
            for part in parts:
                view = memoryview(part)
                for offset in range(0, len(view), WRITE_CHUNK):
                    writer.write(view[offset : offset + WRITE_CHUNK])
                    await asyncio.wait_for(writer.drain(), timeout=max(deadline - loop.time(), 0.0))
            await asyncio.wait_for(writer.drain(), timeout=max(deadline - loop.time(), 0.0))
        except asyncio.TimeoutError:
            self._write_timeouts.inc()
            who = client or "a client"
            self._write_log.emit(f"{who} did not read its answer within {self.limits.write_timeout:g}s")
            _abort(writer)
            return False
        return True

    async def _send_error_and_close(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, error: PatioError
    ) -> None:
        self._requests.inc("other", UNMATCHED, str(error.status))
        await self._answer_and_close(reader, writer, error, 2.0)

    async def _respond(self, parsed: ParsedRequest, client: str) -> Tuple[bytes, Sequence[bytes], bool]:
        started = time.perf_counter()
        request_id = os.urandom(8).hex()
        method = parsed.method
        route_label = UNMATCHED
        try:
            response, route_label = await self._dispatch(parsed, client, request_id)
        except PatioError as exc:
            response = error_response(exc)
        except Exception:
            log.exception(
                "unhandled error in %s %s (request_id=%s)", method, parsed.target.split("?", 1)[0], request_id
            )
            response = error_response(InternalError(f"internal error (request_id={request_id})"))
        method_label = method if method in KNOWN_METHODS else "other"
        self._requests.inc(method_label, route_label, str(response.status))
        self._duration.observe(time.perf_counter() - started, method_label, route_label)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %s -> %d (%s)", client, method, parsed.target, response.status, request_id)
        # Decided after the handler ran: a shutdown that began meanwhile closes the connection.
        keep_alive = parsed.keep_alive and not self._closing
        head = serialize(response, keep_alive=keep_alive, head_only=True, date=self._dates.get(), request_id=request_id)
        parts: Sequence[bytes] = () if method == "HEAD" else response.parts()
        return head, parts, keep_alive

    async def _dispatch(self, parsed: ParsedRequest, client: str, request_id: str) -> Tuple[Response, str]:
        target = parsed.target
        split = urlsplit(target)
        path = unquote(split.path) if split.path else "/"
        route, params = self.router.match(parsed.method, path)
        if route.management and self.api_key is not None:
            self._authorize(parsed)
        request = Request(
            method=parsed.method,
            target=target,
            path=path,
            query=parse_qs(split.query, keep_blank_values=True) if split.query else {},
            headers=parsed.headers,
            body=parsed.body,
            request_id=request_id,
            path_params=params,
            client=client,
        )
        return await route.handler(request), route.path

    def _authorize(self, parsed: ParsedRequest) -> None:
        assert self.api_key is not None
        given = ""
        for key, value in parsed.headers:
            if key == "authorization":
                scheme, _, token = value.partition(" ")
                if scheme.lower() == "bearer":
                    given = token.strip()
                break
        # Compare in constant time whatever the input.
        if not compare_digest(given.encode("utf-8"), self.api_key.encode("utf-8")):
            raise Unauthorized("missing or invalid API key (send Authorization: Bearer KEY)", param="Authorization")


async def _discard(reader: asyncio.StreamReader, limit: int) -> None:
    """Read and drop input until the client closes or ``limit`` bytes have come."""
    left = limit
    while left > 0:
        data = await reader.read(min(left, READ_CHUNK))
        if not data:
            return
        left -= len(data)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Drop the connection and whatever output it still buffers (close() would wait to flush it)."""
    writer.transport.abort()


def _close(writer: asyncio.StreamWriter) -> None:
    """Close politely when nothing is left to send; abort otherwise (a non-reader never drains)."""
    if writer.transport.get_write_buffer_size():
        _abort(writer)
    else:
        writer.close()
