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
from typing import Optional, Set, Tuple

try:  # hmac.compare_digest's own C core; importing hmac would load OpenSSL (3+ MB resident) for one function
    from _operator import _compare_digest as compare_digest
except ImportError:  # pragma: no cover - an interpreter without _operator
    from hmac import compare_digest  # type: ignore[no-redef]
from urllib.parse import parse_qs, unquote, urlsplit

from patio.app import App
from patio.errors import InternalError, PatioError, RequestTimeout, ServiceUnavailable, Unauthorized
from patio.http.protocol import ParsedRequest, RequestParser
from patio.http.responses import DateCache, error_response, serialize
from patio.http.routing import UNMATCHED, RouteTable
from patio.http.types import Request, Response

log = logging.getLogger("patio.http")

READ_CHUNK = 64 * 1024  # bytes per socket read; the parser enforces the real limits
# Method label values; anything else is counted as "other" (bounded cardinality).
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Connection:
    __slots__ = ("busy", "task")

    def __init__(self) -> None:
        self.task: Optional[asyncio.Task[None]] = None
        self.busy = False


class HttpServer:
    def __init__(self, app: App) -> None:
        self.app = app
        self.context = app.context
        core = app.context.settings.core
        self.limits = core.limits
        self.api_key = core.api_key
        self.router = RouteTable(app.routes())
        self._dates = DateCache()
        self._connections: Set[_Connection] = set()
        self._server: Optional[asyncio.AbstractServer] = None
        self._closing = False
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

    @property
    def port(self) -> int:
        sockets = getattr(self._server, "sockets", None)
        assert sockets, "server not started"
        return int(sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._on_connection, host, port, limit=READ_CHUNK, backlog=1024)

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
            if conn.task is not None:
                conn.task.cancel()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection()
        conn.task = asyncio.current_task()
        if len(self._connections) >= self.limits.max_connections or self._closing:
            self._connections.add(conn)
            try:
                reason = "shutting down" if self._closing else f"more than {self.limits.max_connections} connections"
                error = ServiceUnavailable(f"server busy: {reason}")
                writer.write(
                    serialize(error_response(error), keep_alive=False, head_only=False, date=self._dates.get())
                )
                await asyncio.wait_for(writer.drain(), timeout=1.0)
            except (OSError, asyncio.TimeoutError, asyncio.CancelledError):
                pass
            finally:
                self._connections.discard(conn)
                writer.close()
            return
        self._connections.add(conn)
        peer = writer.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""
        try:
            await self._serve_connection(reader, writer, conn, client)
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        except Exception:  # never let one connection's failure escape into the loop
            log.exception("connection handler failed")
        finally:
            self._connections.discard(conn)
            writer.close()

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
                await self._send_error_and_close(writer, exc)
                return
            if parsed is None:
                if parser.in_progress:
                    if request_deadline is None:
                        request_deadline = time.monotonic() + self.limits.request_timeout
                    head = parser.head
                    if head is not None and head.expect_continue and not continued:
                        writer.write(_CONTINUE)  # RFC 9110 §10.1.1: curl waits for it before a large body
                        continued = True
                    timeout = request_deadline - time.monotonic()
                else:
                    if self._closing:
                        return
                    timeout = self.limits.idle_timeout
                try:
                    data = await asyncio.wait_for(reader.read(READ_CHUNK), timeout=max(timeout, 0.0))
                except asyncio.TimeoutError:
                    if parser.in_progress:
                        await self._send_error_and_close(
                            writer, RequestTimeout(f"request not received within {self.limits.request_timeout:g}s")
                        )
                    return
                if not data:
                    return  # client closed (mid-request or idle): nothing to answer
                parser.feed(data)
                continue
            request_deadline = None
            continued = False
            conn.busy = True
            try:
                payload, keep_alive = await self._respond(parsed, client)
                writer.write(payload)
                await writer.drain()
            finally:
                conn.busy = False
            if not keep_alive:
                return

    async def _send_error_and_close(self, writer: asyncio.StreamWriter, error: PatioError) -> None:
        self._requests.inc("other", UNMATCHED, str(error.status))
        writer.write(serialize(error_response(error), keep_alive=False, head_only=False, date=self._dates.get()))
        try:
            await asyncio.wait_for(writer.drain(), timeout=2.0)
        except (asyncio.TimeoutError, OSError):
            pass

    async def _respond(self, parsed: ParsedRequest, client: str) -> Tuple[bytes, bool]:
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
        payload = serialize(
            response, keep_alive=keep_alive, head_only=method == "HEAD", date=self._dates.get(), request_id=request_id
        )
        return payload, keep_alive

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
