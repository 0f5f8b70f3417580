"""The ``/metrics`` answer: Patio's own families written before the engine's share, gzip on request.

No I/O.  The engine's share is one bytes object per scrape, shared by every answer that shows
that scrape (sent, never copied); Patio's own families are written per answer.
"""

import zlib
from typing import NamedTuple, Optional, Sequence, Tuple

from patio.metrics.model import Family
from patio.metrics.write import CONTENT_TYPE, render

__all__ = ["CONTENT_TYPE", "Exposition", "accepts_gzip", "compose", "gzip_compress"]

# Answers smaller than this are not worth compressing.
GZIP_MIN_BYTES = 1024
# zlib's level for /metrics (Prometheus always asks for gzip).  On the 50 KB vLLM capture: level 3
# takes 137 us for 5,005 bytes, level 5 272 us for 4,515, level 6 469 us for 4,369; levels 1-3 are
# zlib's fast strategy.  A scrape's CPU is multiplied by every pod; 500 bytes are not.
GZIP_LEVEL = 3


class Exposition(NamedTuple):
    """What one scrape cycle made: the own families collected for it and the engine's share."""

    own: Sequence[Family]  # the protocol view's families included
    engine: Tuple[bytes, ...]  # UTF-8 pieces; shared by concurrent answers: do not modify
    finished_at: float  # time.monotonic() when it was made
    # The engine's protocol view of that scrape (among ``own``): shown by every answer that
    # shows its engine share.
    protocol: Tuple[Family, ...] = ()


def compose(own: Sequence[Family]) -> bytes:
    """Patio's own families as the head of the answer (the engine's share follows them)."""
    return render(own).encode("utf-8")


def gzip_compress(*parts: bytes, level: int = GZIP_LEVEL) -> bytes:
    """One gzip member (RFC 1952) of ``parts`` joined, via zlib (loaded anyway; the gzip module is
    not).  The parts are fed one by one, never concatenated first."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 16+15: gzip header and trailer
    out = [compressor.compress(part) for part in parts]
    out.append(compressor.flush())
    return b"".join(out)


def accepts_gzip(accept_encoding: Optional[str]) -> bool:
    """True when an ``Accept-Encoding`` value lists gzip (or ``*``) with a non-zero quality."""
    for part in (accept_encoding or "").split(","):
        token, _, params = part.partition(";")
        if token.strip().lower() not in ("gzip", "*"):
            continue
        quality = params.strip()
        if quality.startswith("q="):
            try:
                return float(quality[2:]) > 0
            except ValueError:
                return False
        return True
    return False
