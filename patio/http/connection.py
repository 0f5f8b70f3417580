"""One client connection: bytes in, requests to the handler, answers out, within the limits.

An ``asyncio.Protocol``, not a stream and a task: a request that arrives whole is parsed in the
callback that received it, and when its handler does not wait (a probe) the answer is written
in that same callback, as one write.  Only a handler that waits gets a task (``eager``).
Deadlines are one timer per connection, moved only when a deadline comes sooner than the one
set (a keep-alive request costs no timer work).

The limits it keeps (see ``docs/serving.md``): --first-byte-timeout for a NEW connection,
--idle-timeout between requests, --request-timeout for a whole request (408), --write-timeout
for a whole answer (cut off), answers written in WRITE_CHUNK pieces, the next one only once
the transport's buffer is below WRITE_BUFFER_HIGH, the next pipelined request handled only
once the previous answer is handed over, and input read ahead of its turn bounded by
MAX_UNREAD_BYTES.  Admission (who may hold a slot, whom to evict) is ``patio.http.admission``;
this module acts on its answers.
"""

import asyncio
import logging
import time
from typing import Callable, Dict, Iterator, Optional, Tuple, cast

from patio.errors import PatioError, RequestTimeout, ServiceUnavailable
from patio.http import admission as slots
from patio.http.admission import BUSY, CLOSED, CLOSING, IDLE, MAX_LINGERING, NEW, READING, WAITING, Slot
from patio.http.eager import start_eagerly
from patio.http.output import MAX_BUFFERED_OUTPUT, WRITE_BUFFER_HIGH, WRITE_CHUNK, pieces
from patio.http.request_parser import ParsedRequest, RequestParser
from patio.http.responses import error_response, head_bytes, serialize
from patio.http.server_state import ServerState
from patio.http.types import Response

log = logging.getLogger("patio.http")

INF = float("inf")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# Input received ahead of its turn (pipelined behind an answer, or while waiting for a slot);
# past it the connection stops reading until it catches up.
MAX_UNREAD_BYTES = 128 * 1024
# An error answer that ends a connection must be handed to the kernel within these: a refusal
# at the limit, and an answer to a request that could not be read (400, 408, 413, 431).
REFUSAL_FLUSH_SECONDS = 1.0
ERROR_FLUSH_SECONDS = 2.0
# After such an answer the connection is half-closed and what the client still sends is read and
# dropped, up to these bounds, before the socket is closed: closing with unread input makes the
# kernel reset the connection, and a client still sending its body (curl, http.client, a
# controller uploading) then fails on its send and never reads the answer.  At most
# admission.MAX_LINGERING connections linger at once; past that the socket is closed as it is.
# (nginx: lingering_close, bounded by time.)
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024 * 1024


class HttpConnection(Slot, asyncio.Protocol):
    __slots__ = (
        "_continued",
        "_deadline",
        "_eof",
        "_keep_alive",
        "_lingering",
        "_lost",
        "_parser",
        "_pieces",
        "_read_paused",
        "_request",
        "_shared",
        "_stalled",
        "_task",
        "_timer",
        "_timer_at",
        "_to_drop",
        "_wait_until",
        "_write_paused",
        "client",
        "transport",
    )
    transport: asyncio.Transport  # set by connection_made, before anything else runs

    def __init__(self, shared: ServerState) -> None:
        Slot.__init__(self)
        self._shared = shared
        limits = shared.limits
        self._parser = RequestParser(limits.max_header_bytes, limits.max_body_bytes, shared.heads)
        self.client = ""
        self._deadline = INF  # when the current state's limit runs out
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at = INF  # when the timer fires (never later than _deadline)
        self._task: Optional["asyncio.Task[Tuple[Response, str]]"] = None  # a handler that waits
        self._request: Optional[ParsedRequest] = None  # the request that handler answers
        self._pieces: Optional[Iterator[bytes]] = None  # the rest of the answer being written
        self._keep_alive = False
        self._write_paused = False
        self._stalled = False  # the transport buffered output the kernel would not take
        self._read_paused = False
        self._eof = False
        self._lost = False
        self._continued = False
        self._lingering = False
        self._to_drop = LINGER_BYTES
        self._wait_until = 0.0

    # -- asyncio's callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # Bounded output per connection (see WRITE_CHUNK); low water 0: writing resumes once the
        # transport has handed everything to the kernel.
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH, low=0)
        peer = transport.get_extra_info("peername")
        self.client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""
        self._arrive()

    def data_received(self, data: bytes) -> None:
        self.arrived += len(data)
        state = self.state
        if state == CLOSING:
            self._drop(len(data))
            return
        if state == CLOSED:
            return
        self._parser.feed(data)
        if state == BUSY or state == WAITING:  # read ahead of its turn: kept, bounded
            if self._parser.buffered > MAX_UNREAD_BYTES and not self._read_paused:
                self._read_paused = True
                self.transport.pause_reading()
            return
        self._advance()

    def eof_received(self) -> bool:
        self._eof = True
        state = self.state
        if state == CLOSING:
            if self._lingering:
                self.close()
        elif state != BUSY and state != WAITING and state != CLOSED:
            self.close()  # the client closed, idle or mid-request: nothing to answer
        return True  # keep the transport: an answer owed is still written (half-close)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._stalled = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._pieces is not None:
            self._shared.bulk.add(self)
        elif self.state == CLOSING and not self._lingering:
            self._linger()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._lost = True
        if self._stalled:
            # The transport's output buffer (a copy of what the kernel would not take, up to
            # MAX_BUFFERED_OUTPUT) is freed now: counted, so that a burst of them is trimmed.
            memory = self._shared.memory
            if memory is not None:
                memory.freed(MAX_BUFFERED_OUTPUT)
        if self._task is not None:
            return  # its handler still runs: the slot is held until it ends (drain waits for it)
        self._gone()

    # -- admission -----------------------------------------------------------------------
    def _arrive(self) -> None:
        shared = self._shared
        if shared.closing:
            self._refuse("shutting_down")
            return
        now = time.monotonic()
        if self._make_room(now):
            self._admit(now)
        elif shared.admission.may_wait():
            shared.admission.wait(self, now)
            self._wait_until = now + slots.SILENCE_GRACE
            self._set_deadline(now + slots.SILENCE_GRACE / 5)
        else:
            self._refuse("max_connections")

    def _make_room(self, now: float) -> bool:
        shared = self._shared
        admission = shared.admission
        if admission.has_room():
            return True
        victim = cast(Optional["HttpConnection"], admission.victim(now))
        if victim is None:
            return False
        state = victim.state
        victim.cut()
        shared.evicted.inc()
        shared.eviction_log.emit(f"closed a {state} connection (limit {admission.limit})")
        return True

    def _admit(self, now: float) -> None:
        self._shared.admission.admit(self, now)
        limits = self._shared.limits
        self._set_deadline(now + min(limits.first_byte_timeout, limits.idle_timeout))
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        if self.arrived:
            self._advance()
        elif self._eof:
            self.close()

    def _still_waiting(self, now: float) -> None:
        shared = self._shared
        if shared.closing:
            self._refuse("shutting_down")
        elif self._make_room(now):
            self._admit(now)
        elif now >= self._wait_until:
            self._refuse("max_connections")
        else:
            self._set_deadline(min(now + slots.SILENCE_GRACE / 5, self._wait_until))

    def _refuse(self, reason: str) -> None:
        shared = self._shared
        shared.refused.inc(reason)
        detail = "shutting down" if reason == "shutting_down" else f"more than {shared.limits.max_connections} busy"
        shared.refusal_log.emit(f"{self.client or 'a client'}: {detail}")
        shared.refusing.add(self)
        # A refusal is not a request: counted in the refusals, not in patio_http_requests_total.
        self._fail(error_response(ServiceUnavailable(f"server busy: {detail}")), REFUSAL_FLUSH_SECONDS)

    # -- requests ------------------------------------------------------------------------
    def _move(self, state: str) -> None:
        self._shared.admission.move(self, state, time.monotonic())

    def _advance(self) -> None:
        """Parse what has arrived; answer each complete request in turn, while answers are
        handed over at once (a pipelined request waits for the answer before it).

        A request answered within this call never shows as BUSY: nothing else runs meanwhile.
        It becomes BUSY only when its handler waits or its answer waits for the client."""
        parser = self._parser
        while True:
            self.parsed = self.arrived
            try:
                request = parser.next_request()
            except PatioError as exc:
                self._fail(self._shared.handler.reject(exc), ERROR_FLUSH_SECONDS)
                return
            if request is None:
                self._await_more()
                return
            self._continued = False
            if not self._answer(request):
                return

    def _await_more(self) -> None:
        """No complete request is buffered: wait for the rest of one, or for the next."""
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        parser = self._parser
        state = self.state
        shared = self._shared
        if parser.in_progress:
            if state != READING:
                now = time.monotonic()
                shared.admission.move(self, READING, now)
                self._set_deadline(now + shared.limits.request_timeout)
            head = parser.head
            if head is not None and head.expect_continue and not self._continued:
                self.transport.write(_CONTINUE)  # RFC 9110 §10.1.1: curl waits for it before a large body
                self._continued = True
        elif self._eof:
            self.close()  # the client closed after its last request
        elif state == NEW and not self.arrived:
            pass  # admitted with nothing received yet: the first-byte deadline runs
        elif shared.closing:
            self.close()
        else:
            now = time.monotonic()
            shared.admission.rest(self, now)
            when = now + shared.limits.idle_timeout
            if when < self._timer_at:
                self._set_deadline(when)
            else:
                self._deadline = when  # the timer set fires first and moves itself on

    def _answer(self, request: ParsedRequest) -> bool:
        """Hand ``request`` to the handler; True if its answer is written and the connection
        goes on to the next request now."""
        shared = self._shared
        task, answer = start_eagerly(shared.handler(request, self.client), shared.loop)
        if task is not None:
            if self.state != BUSY:
                self._move(BUSY)
            self._deadline = INF  # the handler may take its time; drain bounds it at shutdown
            self._task = task
            self._request = request
            task.add_done_callback(self._answered)
            return False
        assert answer is not None
        return self._send(request, answer[0], answer[1])

    def _answered(self, task: "asyncio.Task[Tuple[Response, str]]") -> None:
        """The handler that waited has its answer (or was cancelled at drain)."""
        request = self._request
        self._task = self._request = None
        if self._lost or self.state != BUSY or request is None:
            self._gone()
            return
        if task.cancelled():
            self.cut()
            return
        error = task.exception()
        if error is not None:  # the dispatcher maps every Exception: this is a bug, not a client's doing
            log.error("request handler failed", exc_info=error)
            self.cut()
            return
        response, request_id = task.result()
        if self._send(request, response, request_id):
            self._advance()

    def _send(self, request: ParsedRequest, response: Response, request_id: str) -> bool:
        """Write the answer; True if it was handed over at once and the connection goes on."""
        shared = self._shared
        # Decided after the handler ran: a shutdown that began meanwhile closes the connection.
        keep_alive = request.keep_alive and not shared.closing
        self._keep_alive = keep_alive
        head = head_bytes(response, keep_alive=keep_alive, date=shared.dates.get(), request_id=request_id)
        body: Optional[bytes] = response.body
        if request.method == "HEAD":
            body = b""
        elif response.shared_tail:
            body = None  # pieces: the tail is shared with other answers, never copied
        if body is not None and len(body) <= WRITE_CHUNK:
            # The common small answer: one write, one send.
            self.transport.write(head + body if body else head)
            if not self._write_paused:
                if keep_alive:
                    return True
                self.close()
                return False
            self._pieces = iter(())  # all written: what is left is waiting for the client to read
        else:
            self.transport.write(head)
            self._pieces = pieces(response.parts())
            shared.bulk.add(self)
        if self.state != BUSY:
            self._move(BUSY)
        self._set_deadline(time.monotonic() + shared.limits.write_timeout)
        return False

    def pump(self) -> bool:
        """Hand the next piece of the answer to the transport (the bulk writer's turn); True if
        more is to be written at once, False when it waits for the client or is done."""
        pieces = self._pieces
        if pieces is None or self.state != BUSY or self._write_paused:
            return False
        piece = next(pieces, None)
        if piece is None:  # the whole answer is handed over
            self._pieces = None
            if self._answer_written():
                self._advance()
            return False
        transport = self.transport
        transport.write(piece)
        return not self._write_paused and not transport.is_closing()  # is_closing: the client reset it

    def _answer_written(self) -> bool:
        if self._keep_alive:
            return True
        self.close()
        return False

    # -- deadlines -----------------------------------------------------------------------
    def _set_deadline(self, when: float) -> None:
        # asyncio's loop clock is time.monotonic() (BaseEventLoop.time).
        self._deadline = when
        if when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._shared.loop.call_at(when, self._on_timer)
            self._timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = INF
        deadline = self._deadline
        if deadline == INF:
            return
        now = time.monotonic()
        if now < deadline:
            self._set_deadline(deadline)
            return
        _EXPIRED[self.state](self, now)

    def _first_byte_expired(self, now: float) -> None:
        shared = self._shared
        shared.refused.inc("first_byte_timeout")
        shared.refusal_log.emit(
            f"{self.client or 'a client'} sent nothing within {shared.limits.first_byte_timeout:g}s"
        )
        self.close()

    def _request_expired(self, now: float) -> None:
        timeout = self._shared.limits.request_timeout
        error = RequestTimeout(f"request not received within {timeout:g}s")
        self._fail(self._shared.handler.reject(error), ERROR_FLUSH_SECONDS)

    def _write_expired(self, now: float) -> None:
        if self._pieces is None:
            return  # its handler runs: no deadline of ours
        shared = self._shared
        shared.write_timeouts.inc()
        who = self.client or "a client"
        shared.write_log.emit(f"{who} did not read its answer within {shared.limits.write_timeout:g}s")
        self.cut()

    def _idle_expired(self, now: float) -> None:
        self.close()

    def _waiting_expired(self, now: float) -> None:
        self._still_waiting(now)

    def _closing_expired(self, now: float) -> None:
        if self._lingering:
            self.close()  # the linger is over
        else:
            self.cut()  # the answer was not handed over in time

    # -- ending --------------------------------------------------------------------------
    def _fail(self, response: Response, flush_seconds: float) -> None:
        """Answer with an error and end the connection: write, half-close, linger (LINGER_*)."""
        self._move(CLOSING)
        self._pieces = None
        if self._read_paused:  # what the client still sends is read and dropped from now on
            self._read_paused = False
            self.transport.resume_reading()
        self.transport.write(serialize(response, keep_alive=False, date=self._shared.dates.get()))
        self._set_deadline(time.monotonic() + flush_seconds)
        if not self._write_paused:
            self._linger()

    def _linger(self) -> None:
        shared = self._shared
        admission = shared.admission
        if admission.lingering >= MAX_LINGERING or not self.transport.can_write_eof():
            self.close()
            return
        self.transport.write_eof()
        admission.lingering += 1
        self._lingering = True
        self._deadline = time.monotonic() + LINGER_SECONDS
        if self._eof:
            self.close()

    def _drop(self, size: int) -> None:
        self._to_drop -= size
        if self._to_drop <= 0 and self._lingering:
            self.close()

    def close(self) -> None:
        """Close politely: what is buffered is still sent, within --write-timeout."""
        if self.state == CLOSED:
            return
        self._gone()
        self.transport.close()
        if self.transport.get_write_buffer_size():
            self._set_deadline(time.monotonic() + self._shared.limits.write_timeout)
        else:
            self._deadline = INF

    def cut(self) -> None:
        """Drop the connection and whatever output it still buffers; cancel a running handler."""
        self._gone()
        self.transport.abort()
        task = self._task
        if task is not None:
            task.cancel()

    def _gone(self) -> None:
        shared = self._shared
        if self._lingering:
            self._lingering = False
            shared.admission.lingering -= 1
        shared.refusing.discard(self)
        shared.admission.close(self, time.monotonic())
        if self._lost and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired_after_close(self, now: float) -> None:
        self.transport.abort()  # a final answer not flushed within --write-timeout


# What runs when the deadline of a state passes.
_EXPIRED: Dict[str, Callable[[HttpConnection, float], None]] = {
    WAITING: HttpConnection._waiting_expired,
    NEW: HttpConnection._first_byte_expired,
    IDLE: HttpConnection._idle_expired,
    READING: HttpConnection._request_expired,
    BUSY: HttpConnection._write_expired,
    CLOSING: HttpConnection._closing_expired,
    CLOSED: HttpConnection._expired_after_close,
}
