"""The HTTP listener: the only module that opens a socket to serve on.

``HttpServer`` is given the one request handler (``patio.http.dispatch.Dispatcher``: routes,
the API key, request metrics, error mapping), the named limits and the registry for its own
connection metrics; it knows nothing of the application.  Each accepted connection is an
``HttpConnection`` (``patio.http.connection``), admitted by the slot table of
``patio.http.admission``.  Shutdown: ``close_listener()`` stops accepting and closes
connections that owe nothing, ``drain()`` waits for in-flight answers, then cuts the rest.
Given ``run_blocking`` (the pool for short blocking work), the output buffers that clients
which stopped reading leave behind are handed back to the OS after a burst (``FreedPieces``).
"""

import asyncio
import time
from typing import List, Optional

from patio.core_settings import Limits
from patio.http.admission import BUSY, Admission
from patio.http.connection import HttpConnection
from patio.http.freed import FreedPieces, RunBlocking
from patio.http.server_state import Cuttable, RequestHandler, ServerState
from patio.metrics.registry import Registry

# patio_http_connections_refused_total{reason} values.
REFUSE_REASONS = ("max_connections", "shutting_down", "first_byte_timeout")
# Connections the kernel queues for accept (Kubernetes probes and a scrape burst fit).
LISTEN_BACKLOG = 1024
# How often drain() looks whether the in-flight answers are done.
DRAIN_POLL_SECONDS = 0.02


class HttpServer:
    def __init__(
        self, handler: RequestHandler, limits: Limits, registry: Registry, run_blocking: Optional[RunBlocking] = None
    ) -> None:
        self.handler = handler
        self.limits = limits
        self._run_blocking = run_blocking
        self._shared: Optional[ServerState] = None
        self._server: Optional[asyncio.AbstractServer] = None
        registry.gauge("patio_http_connections", "Open client connections.", func=self._open_connections)
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

    @property
    def port(self) -> int:
        sockets = getattr(self._server, "sockets", None)
        assert sockets, "server not started"
        return int(sockets[0].getsockname()[1])

    def _open_connections(self) -> float:
        return float(len(self._shared.admission.open)) if self._shared is not None else 0.0

    @property
    def connections(self) -> List[HttpConnection]:
        """The connections holding a slot (what --max-connections bounds)."""
        if self._shared is None:
            return []
        return [conn for conn in self._shared.admission.open if isinstance(conn, HttpConnection)]

    @property
    def refusing(self) -> List[Cuttable]:
        """Refused connections still writing their 503 or lingering (outside the slots)."""
        return list(self._shared.refusing) if self._shared is not None else []

    @property
    def admission(self) -> Admission:
        assert self._shared is not None, "server not started"
        return self._shared.admission

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        memory = FreedPieces(loop, self._run_blocking) if self._run_blocking is not None else None
        shared = ServerState(
            self.handler, self.limits, loop, self._refused, self._evicted, self._write_timeouts, memory
        )
        self._shared = shared
        self._server = await loop.create_server(lambda: HttpConnection(shared), host, port, backlog=LISTEN_BACKLOG)

    def close_listener(self) -> None:
        """Stop accepting connections; connections that owe nothing close, busy ones finish."""
        if self._shared is not None:
            self._shared.closing = True
        if self._server is not None:
            self._server.close()
        for conn in self.connections:
            if conn.state != BUSY:
                conn.close()

    async def drain(self, timeout: float) -> None:
        """Wait for in-flight requests, at most ``timeout`` seconds; then cut what is left."""
        deadline = time.monotonic() + timeout
        while any(c.state == BUSY for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        shared = self._shared
        if shared is not None:
            for conn in [*self.connections, *shared.refusing, *shared.admission.waiting]:
                if isinstance(conn, HttpConnection):
                    conn.cut()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        if shared is not None and shared.memory is not None:
            shared.memory.close()
