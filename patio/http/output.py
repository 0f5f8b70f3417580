"""Answers out: the bounds on what a connection buffers, and the one writer of large answers.

A small answer (at most WRITE_CHUNK) is written by its connection at once.  A larger one is
cut into WRITE_CHUNK pieces (views of the response's parts, never copies) that ``BulkWriter``
hands to the transports round-robin, at most PIECES_PER_TURN per turn of the event loop.
"""

import asyncio
from collections import deque
from typing import Deque, Iterator, Protocol, Sequence, Set, cast

# Output is handed to the transport in pieces of this size, and the next piece only once the
# transport's buffer is below WRITE_BUFFER_HIGH: a client that does not read holds at most
# WRITE_CHUNK + WRITE_BUFFER_HIGH bytes of output of its own (plus a reference to a shared
# response body, e.g. the engine's share of /metrics), never a whole copy of a large answer.
WRITE_CHUNK = 16 * 1024
WRITE_BUFFER_HIGH = 16 * 1024
# Bytes of buffered output per connection, at most (the bound stated in docs and tested).
MAX_BUFFERED_OUTPUT = WRITE_CHUNK + WRITE_BUFFER_HIGH
# Pieces of large answers written per turn of the event loop, across all connections (256 KiB).
PIECES_PER_TURN = 16


def pieces(parts: Sequence[bytes]) -> Iterator[bytes]:
    """A body as the transport gets it: WRITE_CHUNK pieces, views of the parts, never copies."""
    for part in parts:
        view = memoryview(part)
        for offset in range(0, len(view), WRITE_CHUNK):
            yield cast(bytes, view[offset : offset + WRITE_CHUNK])


class Pumped(Protocol):
    """A connection with pieces to write (``patio.http.connection``)."""

    def pump(self) -> bool:
        """Write the next piece; True if more can be written at once."""


class BulkWriter:
    """Writes the pieces of large answers, round-robin, at most PIECES_PER_TURN per turn of the
    loop: however many clients download /metrics (or stall reading it, while the kernel still
    takes their bytes), a probe waits behind at most that much writing, not behind all of it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: Deque[Pumped] = deque()
        self._queued: Set[Pumped] = set()
        self._scheduled = False

    def add(self, conn: Pumped) -> None:
        if conn not in self._queued:
            self._queued.add(conn)
            self._queue.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        self._scheduled = False
        queue, queued = self._queue, self._queued
        for _ in range(PIECES_PER_TURN):
            if not queue:
                return
            conn = queue.popleft()
            queued.discard(conn)
            if conn.pump():
                queued.add(conn)
                queue.append(conn)
        if queue:
            self._scheduled = True
            self._loop.call_soon(self._turn)
