"""Warnings that repeat, logged per cause: the first in full, then one line per interval with a count.

A peer that misbehaves on every message (a publisher sending malformed frames, a
Redis refusing every write) must not turn into megabytes of identical log lines, and
one flood must not hide another cause: each cause keeps its own window.
"""

import logging
import time
from typing import Callable, Dict, List

# One summary line per cause at most this often (seconds).
DEFAULT_INTERVAL = 60.0
# Causes remembered at once; a new cause past it evicts the oldest (causes are a fixed
# set of names in practice, never peer-supplied text).
MAX_CAUSES = 64


class _Cause:
    __slots__ = ("last", "level", "since", "suppressed")

    def __init__(self, since: float, level: int) -> None:
        self.since = since
        self.suppressed = 0
        self.last = ""
        self.level = level


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._causes: Dict[str, _Cause] = {}

    def log(self, cause: str, message: str, level: int = logging.WARNING) -> None:
        now = self.clock()
        entry = self._causes.get(cause)
        if entry is None:
            if len(self._causes) >= MAX_CAUSES:
                del self._causes[next(iter(self._causes))]
            self._causes[cause] = _Cause(now, level)
            self.logger.log(level, "%s", message)
            return
        if now - entry.since < self.interval:
            entry.suppressed += 1
            entry.last = message
            return
        self._summarize(cause, entry, now)
        entry.since = now
        self.logger.log(level, "%s", message)

    def flush(self) -> None:
        """Summaries for causes whose interval ran out with repeats not yet reported."""
        now = self.clock()
        done: List[str] = []
        for cause, entry in self._causes.items():
            if now - entry.since >= self.interval:
                if entry.suppressed:
                    self._summarize(cause, entry, now)
                done.append(cause)
        for cause in done:  # quiet for a whole interval: the next occurrence is logged in full again
            del self._causes[cause]

    def _summarize(self, cause: str, entry: _Cause, now: float) -> None:
        if entry.suppressed:
            self.logger.log(
                entry.level,
                "%d more like this (%s) in the last %.0fs; the last: %s",
                entry.suppressed,
                cause,
                now - entry.since,
                entry.last,
            )
        entry.suppressed = 0
        entry.last = ""
