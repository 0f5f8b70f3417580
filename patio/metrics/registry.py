"""Patio's own metrics: counters, gauges and histograms with fixed label names.

Components receive the one ``Registry`` built at start and create their metrics
on it; ``collect()`` returns ``Family`` values for the writer.  Safe to update
from worker threads (one lock per metric).  Names use the ``patio_`` prefix
(Prometheus convention for a program's own metrics).
"""

import bisect
import math
import threading
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from patio.metrics.model import Family, Item, Labels, Sample

# Latency buckets for a sidecar: sub-millisecond probes up to slow engine calls.
DEFAULT_BUCKETS: Tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

LabelValues = Tuple[str, ...]
Collector = Callable[[], Iterable[Family]]


def _bound(value: float) -> str:
    from patio.metrics.write import format_value

    return format_value(value)


class _Metric:
    type = "untyped"

    def __init__(self, name: str, help: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, values: Sequence[str]) -> LabelValues:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(values)}")
        return tuple(str(v) for v in values)

    def _labels(self, key: LabelValues, extra: Labels = ()) -> Labels:
        return tuple(zip(self.labelnames, key)) + extra

    def family(self) -> Family:
        raise NotImplementedError


class Counter(_Metric):
    """A monotonic counter; the family and its samples are named ``<name>`` (which ends in ``_total``)."""

    type = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: Dict[LabelValues, float] = {}
        if not self.labelnames:
            self._values[()] = 0.0

    def inc(self, *labelvalues: str, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        key = self._key(labelvalues)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labelvalues: str) -> float:
        with self._lock:
            return self._values.get(self._key(labelvalues), 0.0)

    def family(self) -> Family:
        with self._lock:
            items = sorted(self._values.items())
        return Family(self.name, self.type, self.help, [Sample(self.name, self._labels(k), v) for k, v in items])


class Gauge(_Metric):
    type = "gauge"

    def __init__(
        self, name: str, help: str, labelnames: Sequence[str] = (), func: Optional[Callable[[], float]] = None
    ) -> None:
        super().__init__(name, help, labelnames)
        self._values: Dict[LabelValues, float] = {}
        self._func = func
        if not self.labelnames and func is None:
            self._values[()] = 0.0

    def set(self, value: float, *labelvalues: str) -> None:
        key = self._key(labelvalues)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, *labelvalues: str, amount: float = 1.0) -> None:
        key = self._key(labelvalues)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, *labelvalues: str, amount: float = 1.0) -> None:
        self.inc(*labelvalues, amount=-amount)

    def remove(self, *labelvalues: str) -> None:
        with self._lock:
            self._values.pop(self._key(labelvalues), None)

    def value(self, *labelvalues: str) -> float:
        if self._func is not None:
            return float(self._func())
        with self._lock:
            return self._values.get(self._key(labelvalues), 0.0)

    def family(self) -> Family:
        if self._func is not None:
            return Family(self.name, self.type, self.help, [Sample(self.name, (), float(self._func()))])
        with self._lock:
            items = sorted(self._values.items())
        return Family(self.name, self.type, self.help, [Sample(self.name, self._labels(k), v) for k, v in items])


class Histogram(_Metric):
    type = "histogram"

    def __init__(
        self, name: str, help: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> None:
        super().__init__(name, help, labelnames)
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.bounds: Tuple[float, ...] = tuple(bounds)
        self._le = tuple(_bound(b) for b in self.bounds)
        # per label set: [bucket counts (non-cumulative)..., sum, count]
        self._series: Dict[LabelValues, List[float]] = {}
        if not self.labelnames:
            self._series[()] = [0.0] * (len(self.bounds) + 2)

    def observe(self, value: float, *labelvalues: str) -> None:
        key = self._key(labelvalues)
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [0.0] * (len(self.bounds) + 2)
            series[index] += 1
            series[-2] += value
            series[-1] += 1

    def count(self, *labelvalues: str) -> float:
        with self._lock:
            series = self._series.get(self._key(labelvalues))
            return series[-1] if series else 0.0

    def family(self) -> Family:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        samples: List[Item] = []
        bucket_name, sum_name, count_name = self.name + "_bucket", self.name + "_sum", self.name + "_count"
        for key, series in items:
            cumulative = 0.0
            for le, count in zip(self._le, series):
                cumulative += count
                samples.append(Sample(bucket_name, self._labels(key, (("le", le),)), cumulative))
            samples.append(Sample(sum_name, self._labels(key), series[-2]))
            samples.append(Sample(count_name, self._labels(key), series[-1]))
        return Family(self.name, self.type, self.help, samples)


class Registry:
    """All of Patio's own metrics, in registration order."""

    def __init__(self) -> None:
        self._metrics: Dict[str, _Metric] = {}
        self._collectors: List[Collector] = []
        self._lock = threading.Lock()

    def _add(self, metric: _Metric) -> None:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} registered twice")
            self._metrics[metric.name] = metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help, labelnames)
        self._add(metric)
        return metric

    def gauge(
        self, name: str, help: str, labelnames: Sequence[str] = (), func: Optional[Callable[[], float]] = None
    ) -> Gauge:
        metric = Gauge(name, help, labelnames, func)
        self._add(metric)
        return metric

    def histogram(
        self, name: str, help: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> Histogram:
        metric = Histogram(name, help, labelnames, buckets)
        self._add(metric)
        return metric

    def add_collector(self, collector: Collector) -> None:
        """A callable returning families computed at scrape time (process metrics, build info)."""
        with self._lock:
            self._collectors.append(collector)

    def collect(self) -> List[Family]:
        with self._lock:
            metrics = list(self._metrics.values())
            collectors = list(self._collectors)
        families = [metric.family() for metric in metrics]
        for collector in collectors:
            families.extend(collector())
        return families
