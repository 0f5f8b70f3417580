"""Freed memory counted on the event loop, handed back to the OS by one trim after a burst.

The HTTP server counts what closing connections free (their stalled output buffers) here; the
trim itself (``patio.metrics.memory.release_free_memory``) runs in a worker thread.
"""

import asyncio
import logging
from typing import Any, Awaitable, Callable, Optional

from patio.metrics.memory import RELEASE_AFTER_BYTES, RELEASE_DELAY_SECONDS, release_free_memory

log = logging.getLogger("patio")

RunBlocking = Callable[[Callable[[], bool]], Awaitable[Any]]


class FreedPieces:
    """Counts memory the event loop frees in many small pieces; once ``RELEASE_AFTER_BYTES`` are
    counted, one trim runs ``RELEASE_DELAY_SECONDS`` later, in a worker thread (``run_blocking``).

    The pieces are each below glibc's mmap threshold, so they come from the main heap, and a
    freed one stays resident while a live block lies above it: 300 scrapers that stopped reading
    left 300 holes of ~21 KiB (their transports' output buffers) between small blocks that are
    still in use, and about 12 MB resident after every one of them had closed.  What is freed
    within the delay is covered by the same trim; what is counted after it starts counts towards
    the next, so less than ``RELEASE_AFTER_BYTES`` of counted pieces is ever left untrimmed.
    Event-loop thread only."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        run_blocking: RunBlocking,
        threshold: int = RELEASE_AFTER_BYTES,
        delay: float = RELEASE_DELAY_SECONDS,
        release: Callable[[], bool] = release_free_memory,
    ) -> None:
        self._loop = loop
        self._run_blocking = run_blocking
        self._threshold = threshold
        self._delay = delay
        self._release = release
        self._counted = 0
        self._timer: Optional[asyncio.TimerHandle] = None
        self._running: "Optional[asyncio.Future[None]]" = None
        self.releases = 0  # trims run (for tests and the bench)

    def freed(self, size: int) -> None:
        self._counted += size
        if self._counted >= self._threshold and self._timer is None and self._running is None:
            self._timer = self._loop.call_later(self._delay, self._start)

    def _start(self) -> None:
        self._timer = None
        self._counted = 0
        self._running = asyncio.ensure_future(self._trim())

    async def _trim(self) -> None:
        try:
            await self._run_blocking(self._release)
            self.releases += 1
        except Exception as exc:  # the critical pool is full or shut down: the next count tries again
            log.debug("memory trim not run: %r", exc)
        finally:
            self._running = None
            if self._counted >= self._threshold:  # counted while this one ran
                self._timer = self._loop.call_later(self._delay, self._start)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
