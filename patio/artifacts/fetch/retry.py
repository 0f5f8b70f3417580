"""Download settings for the network and the bounded retry loop every store call goes through.

Kept apart from ``patio.artifacts.fetch.net`` (the HTTP client) so that settings and
the fetch planner can be imported at start without loading ``http.client`` and
``ssl``; those load with the first download, in its worker thread.
"""

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Optional, TypeVar

from patio.artifacts.errors import ArtifactUnavailable, DownloadCancelled, Transient
from patio.artifacts.fetch.egress import DEFAULT_POLICY, EgressPolicy

if TYPE_CHECKING:  # pragma: no cover
    import random

T = TypeVar("T")
log = logging.getLogger("patio.artifacts")

# Statuses that mean "try again later" (throttling, overload, gateway trouble).
TRANSIENT_STATUSES = frozenset((408, 429, 500, 502, 503, 504))


@dataclass(frozen=True)
class NetConfig:
    timeout: float = 60.0  # per socket operation (connect, each read)
    proxies: Mapping[str, str] = field(default_factory=dict)  # scheme -> proxy URL (from HTTP(S)_PROXY)
    no_proxy: str = ""
    ca_file: Optional[str] = None  # extra CA bundle (REQUESTS_CA_BUNDLE / SSL_CERT_FILE)
    egress: EgressPolicy = DEFAULT_POLICY  # where connections may go (fetch/egress.py)


@dataclass(frozen=True)
class DownloadRetry:
    """Retries of one store request during a download (429, 5xx, resets, stalls): jittered
    doubling from ``base_delay`` up to ``max_delay``, at most ``attempts`` tries, a server's
    Retry-After honoured up to ``max_retry_after``.  Engine calls have their own
    (``patio.engines.client.EngineCallRetry``)."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_retry_after: float = 60.0  # a server asking for longer than this is not worth waiting for

    def delay(self, attempt: int, rng: "random.Random") -> float:
        return min(self.max_delay, self.base_delay * (2 ** (attempt - 1))) * rng.uniform(0.5, 1.0)


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils  # rare (an HTTP-date Retry-After); the email package is not loaded at start

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def call_with_retries(
    func: Callable[[], T],
    what: str,
    policy: DownloadRetry,
    cancel: Optional[threading.Event] = None,
    rng: "Optional[random.Random]" = None,
) -> T:
    """``func()`` with bounded exponential backoff on ``Transient``; honours Retry-After."""
    if rng is None:
        import random  # in the download's worker thread, not at start

        rng = random.Random()
    attempt = 0
    while True:
        attempt += 1
        if cancel is not None and cancel.is_set():
            raise DownloadCancelled(f"{what}: cancelled")
        try:
            return func()
        except Transient as exc:
            if attempt >= policy.attempts:
                raise ArtifactUnavailable(f"{exc.message} (gave up after {attempt} attempts)") from None
            delay = exc.retry_after if exc.retry_after is not None else policy.delay(attempt, rng)
            if delay > policy.max_retry_after:
                raise ArtifactUnavailable(
                    f"{exc.message}; the server asks to retry after {delay:.0f}s, longer than "
                    f"{policy.max_retry_after:.0f}s"
                ) from None
            log.warning("%s (attempt %d/%d); retrying in %.1fs", exc.message, attempt, policy.attempts, delay)
            if cancel is not None:
                if cancel.wait(delay):
                    raise DownloadCancelled(f"{what}: cancelled") from None
            else:
                time.sleep(delay)
