"""Hand freed heap memory back to the operating system after a large scrape or a burst.

CPython frees a scrape's millions of small objects, but glibc keeps the pages (in the main heap
and in the worker threads' arenas; the dynamic mmap threshold also moves large blocks onto the
heap after the first big free): a 27 MB payload left about 1 GB resident.
``malloc_trim(0)`` returns whole free pages from every arena.  glibc only; a no-op elsewhere
(musl has no ``malloc_trim``).  ``ctypes`` is imported here, on first use, never at start.
"""

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
