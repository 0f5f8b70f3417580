"""When to try a peer again: one retry policy for the bridge's connections and writes.

From ``RETRY_MIN`` doubling up to the configured maximum.  A connection that drops resets
the wait only if it had lived ``STABLE_SECONDS``: a peer that accepts and hangs up at once
(again and again) keeps doubling it, where resetting on every successful connect retried
it ten times a second.  No IO.
"""

import time
from typing import Callable

# First wait after a failure (seconds).
RETRY_MIN = 0.1
# A connection that lived this long resets the backoff when it drops.
STABLE_SECONDS = 30.0


class Backoff:
    def __init__(self, maximum: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.maximum = maximum
        self.clock = clock
        self.wait = RETRY_MIN
        self.retry_at = 0.0
        self.connected_at = 0.0

    def due(self) -> bool:
        return self.clock() >= self.retry_at

    def remaining(self) -> float:
        return self.retry_at - self.clock()

    def failed(self) -> None:
        """An attempt failed: wait, then try again after a longer wait next time."""
        self.retry_at = self.clock() + self.wait
        self.wait = min(self.wait * 2, self.maximum)

    def connected(self) -> None:
        self.connected_at = self.clock()

    def lost(self) -> None:
        """A connection dropped: back off, from the start only if it had been stable."""
        if self.clock() - self.connected_at >= STABLE_SECONDS:
            self.wait = RETRY_MIN
        self.failed()

    def succeeded(self) -> None:
        self.wait = RETRY_MIN
        self.retry_at = 0.0
