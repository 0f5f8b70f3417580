"""Hand freed heap memory back to the operating system after a large scrape.

CPython frees a scrape's millions of small objects, but glibc keeps the pages (in the main heap
and in the worker threads' arenas; the dynamic mmap threshold also moves large blocks onto the
heap after the first big free): a 27 MB payload left about 1 GB resident (issue 13, row 10).
``malloc_trim(0)`` returns whole free pages from every arena.  glibc only; a no-op elsewhere
(musl has no ``malloc_trim``).  ``ctypes`` is imported here, on first use, never at start.
"""

# Payloads at least this large are followed by a trim (smaller ones leave too little to matter).
RELEASE_AFTER_BYTES = 4 * 1024 * 1024


def release_free_memory() -> bool:
    """Return free heap pages to the OS; False where the C library cannot."""
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return False
    trim(0)  # a foreign call: ctypes releases the GIL meanwhile
    return True
