"""What the connections of one server share: the handler they hand requests to, the limits,
the slot table, the caches, the counters and their throttled logs, the bulk writer, and the
count of output freed by stalled connections (``memory``, which trims the heap after a burst).

Built by ``HttpServer`` when it starts; ``closing`` is set when it stops listening.
"""

import asyncio
import logging
import time
from typing import Any, Coroutine, Optional, Protocol, Set, Tuple

from patio.core_settings import Limits
from patio.errors import PatioError
from patio.http.admission import Admission
from patio.http.freed import FreedPieces
from patio.http.output import BulkWriter
from patio.http.request_parser import HeadCache, ParsedRequest
from patio.http.responses import DateCache
from patio.http.types import Response
from patio.metrics.registry import Counter

log = logging.getLogger("patio.http")

# Refusals and write timeouts are logged at most once per this many seconds (with a count), so a
# flood cannot flood the log too.
LOG_EVERY = 10.0


class RequestHandler(Protocol):
    """What the connection calls: ``await handler(request, client)`` -> (response, request id),
    and ``reject(error)`` for a request that could not be read.  (``patio.http.dispatch``.)"""

    def __call__(self, parsed: ParsedRequest, client: str) -> Coroutine[Any, Any, Tuple[Response, str]]: ...

    def reject(self, error: PatioError) -> Response: ...


class Cuttable(Protocol):
    """A connection, as drain() sees it (``patio.http.connection``)."""

    def cut(self) -> None:
        """Drop it now, with whatever output it still buffers."""


class ThrottledLog:
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


class ServerState:
    """What the connections of one server share: the handler, the limits, the slots, the
    caches, the counters.  Built by ``HttpServer``; ``closing`` is set when it stops listening."""

    def __init__(
        self,
        handler: RequestHandler,
        limits: Limits,
        loop: asyncio.AbstractEventLoop,
        refused: Counter,
        evicted: Counter,
        write_timeouts: Counter,
        memory: Optional[FreedPieces] = None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.loop = loop
        self.admission = Admission(limits.max_connections)
        self.heads = HeadCache()
        self.dates = DateCache()
        self.refused = refused
        self.evicted = evicted
        self.write_timeouts = write_timeouts
        self.refusal_log = ThrottledLog("refused client connections")
        self.eviction_log = ThrottledLog("evicted connections at the connection limit")
        self.write_log = ThrottledLog("cut connections that did not read their answer")
        self.closing = False
        self.refusing: Set[Cuttable] = set()  # refused, still answering or lingering
        self.bulk = BulkWriter(loop)
        self.memory = memory
