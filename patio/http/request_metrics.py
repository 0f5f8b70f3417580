"""The request metrics: ``patio_http_requests_total{method,route,code}`` and
``patio_http_request_duration_seconds{method,route}``, tallied on the event loop.

Every request is counted, so the count must cost next to nothing: one call, a dictionary
keyed by the label values as they are (no per-request label conversion or lock; only the
event loop touches the tallies).  The registry reads them when it collects (a collector), in
the very form its own ``Counter`` and ``Histogram`` give (tests/test_http_dispatch.py checks
them against those).
"""

import bisect
import math
from typing import Dict, List, Sequence, Tuple

from patio.http.routing import UNMATCHED
from patio.metrics.model import Family, Item, Sample
from patio.metrics.registry import DEFAULT_BUCKETS, Registry
from patio.metrics.write import format_value

REQUESTS = "patio_http_requests_total"
REQUESTS_HELP = "HTTP requests answered, by route template."
DURATION = "patio_http_request_duration_seconds"
DURATION_HELP = "Time to answer HTTP requests, by route template."


class RequestMetrics:
    def __init__(self, registry: Registry, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.bounds: Tuple[float, ...] = tuple(bounds)
        self._le = tuple(format_value(b) for b in self.bounds)
        self._counts: Dict[Tuple[str, str, str], float] = {}
        # per (method, route): [bucket counts (non-cumulative)..., sum, count]
        self._durations: Dict[Tuple[str, str], List[float]] = {}
        registry.add_collector(self.families)

    def count(self, method: str, route: str, code: str, seconds: float) -> None:
        """One answered request (``seconds`` to answer it)."""
        key = (method, route, code)
        counts = self._counts
        counts[key] = counts.get(key, 0.0) + 1.0
        series = self._durations.get((method, route))
        if series is None:
            series = self._durations[(method, route)] = [0.0] * (len(self.bounds) + 2)
        series[bisect.bisect_left(self.bounds, seconds)] += 1
        series[-2] += seconds
        series[-1] += 1

    def reject(self, code: str) -> None:
        """A request that could not be read: counted, not timed (it reached no route)."""
        key = ("other", UNMATCHED, code)
        self._counts[key] = self._counts.get(key, 0.0) + 1.0

    def families(self) -> List[Family]:
        # Copied first (one C call each, whole under the GIL): a collector run off the loop
        # still sees a consistent tally.
        counts = sorted(dict(self._counts).items())
        durations = sorted((key, list(series)) for key, series in dict(self._durations).items())
        requests: List[Item] = [
            Sample(REQUESTS, (("method", m), ("route", r), ("code", c)), value) for (m, r, c), value in counts
        ]
        samples: List[Item] = []
        for (method, route), series in durations:
            labels = (("method", method), ("route", route))
            cumulative = 0.0
            for le, count in zip(self._le, series):
                cumulative += count
                samples.append(Sample(DURATION + "_bucket", (*labels, ("le", le)), cumulative))
            samples.append(Sample(DURATION + "_sum", labels, series[-2]))
            samples.append(Sample(DURATION + "_count", labels, series[-1]))
        return [
            Family(REQUESTS, "counter", REQUESTS_HELP, requests),
            Family(DURATION, "histogram", DURATION_HELP, samples),
        ]
