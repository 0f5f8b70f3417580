"""Hand freed heap memory back to the operating system after a large scrape or a burst.

CPython frees a scrape's millions of small objects, but glibc keeps the pages (in the main heap
and in the worker threads' arenas; the dynamic mmap threshold also moves large blocks onto the
heap after the first big free): a 27 MB payload left about 1 GB resident.
``malloc_trim(0)`` returns whole free pages from every arena.  glibc only; a no-op elsewhere
(musl has no ``malloc_trim``).  ``ctypes`` is imported here, on first use, never at start.
"""

import asyncio
import logging
from typing import Any, Awaitable, Callable, Optional

log = logging.getLogger("patio")

# Payloads at least this large are followed by a trim (smaller ones leave too little to matter);
# so is this much memory freed in pieces by the event loop (``FreedPieces``).
RELEASE_AFTER_BYTES = 4 * 1024 * 1024
# ... and by a second trim this long after, when the answers that shared the render are written.
RELEASE_DELAY_SECONDS = 1.0


# Blocks at least this large get a mapping of their own, unmapped as soon as they are freed.  glibc
# starts at this value but raises it after each large free (up to 32 MiB): the render pieces of the
# next large scrape then land in the heap, and stay resident after they are freed until a trim.
MMAP_THRESHOLD_BYTES = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt parameter, <malloc.h>


def prefer_mmap() -> bool:
    """Pin glibc's mmap threshold at ``MMAP_THRESHOLD_BYTES`` (idempotent); False where it cannot."""
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def release_free_memory() -> bool:
    """Return free heap pages to the OS; False where the C library cannot."""
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return False
    trim(0)  # a foreign call: ctypes releases the GIL meanwhile
    return True


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
