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
from patio.metrics.write import format_value, header_lines, is_legacy_name, label_set_text

# Latency buckets for a sidecar: sub-millisecond probes up to slow engine calls.
DEFAULT_BUCKETS: Tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

LabelValues = Tuple[str, ...]
Collector = Callable[[], Iterable[Family]]


class _Metric:
    type = "untyped"

    def __init__(self, name: str, help: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        # Per label set (and bucket bound), made once: its labels and what its sample line writes
        # between the name and the value.  A scrape then writes each own sample as name + that +
        # value (``Sample.text``).  None: the name is written quoted; the writer renders the line.
        self._heads: Dict[Tuple[LabelValues, Labels], Tuple[Labels, Optional[str]]] = {}
        self._bare = is_legacy_name(name)
        self._header = header_lines(Family(name, self.type, help))
        # Most of Patio's own metrics do not change between two scrapes: the family made for the
        # last one is handed out again until an update (counted under the lock) says otherwise.
        self._changes = 0
        self._made: Optional[Tuple[int, Family]] = None

    def _key(self, values: Sequence[str]) -> LabelValues:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(values)}")
        return tuple(str(v) for v in values)

    def _labels(self, key: LabelValues, extra: Labels = ()) -> Labels:
        return tuple(zip(self.labelnames, key)) + extra

    def _sample(self, name: str, key: LabelValues, value: float, extra: Labels = ()) -> Sample:
        known = self._heads.get((key, extra))
        if known is None:
            labels = self._labels(key, extra)
            known = self._heads[(key, extra)] = (labels, label_set_text(labels) + " " if self._bare else None)
        labels, head = known
        return Sample(name, labels, value, None, None if head is None else head + format_value(value))

    def family(self) -> Family:
        """The metric's family now (the same object as last time when nothing changed since)."""
        changes, made = self._changes, self._made
        if made is not None and made[0] == changes:
            return made[1]
        family = self._family()
        # Tagged with the count read before the snapshot: an update meanwhile makes the next
        # call build again, never hands out a stale family.
        self._made = (changes, family)
        return family

    def _family(self) -> Family:
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
            self._changes += 1

    def value(self, *labelvalues: str) -> float:
        with self._lock:
            return self._values.get(self._key(labelvalues), 0.0)

    def _family(self) -> Family:
        with self._lock:
            items = sorted(self._values.items())
        name = self.name
        return Family(name, self.type, self.help, [self._sample(name, k, v) for k, v in items], self._header)


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
        value = float(value)
        with self._lock:
            if self._values.get(key) != value:  # set to what it was (engine_up at each scrape): unchanged
                self._values[key] = value
                self._changes += 1

    def inc(self, *labelvalues: str, amount: float = 1.0) -> None:
        key = self._key(labelvalues)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount
            self._changes += 1

    def dec(self, *labelvalues: str, amount: float = 1.0) -> None:
        self.inc(*labelvalues, amount=-amount)

    def remove(self, *labelvalues: str) -> None:
        key = self._key(labelvalues)
        with self._lock:
            self._values.pop(key, None)
            self._heads.pop((key, ()), None)
            self._changes += 1

    def value(self, *labelvalues: str) -> float:
        if self._func is not None:
            return float(self._func())
        with self._lock:
            return self._values.get(self._key(labelvalues), 0.0)

    def family(self) -> Family:
        if self._func is not None:  # read at every scrape: nothing says when it changed
            return self._family()
        return super().family()

    def _family(self) -> Family:
        name = self.name
        if self._func is not None:
            return Family(name, self.type, self.help, [self._sample(name, (), float(self._func()))], self._header)
        with self._lock:
            items = sorted(self._values.items())
        return Family(name, self.type, self.help, [self._sample(name, k, v) for k, v in items], self._header)


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
        self._le = tuple(format_value(b) for b in self.bounds)
        self._le_labels = tuple((("le", le),) for le in self._le)
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
            self._changes += 1

    def count(self, *labelvalues: str) -> float:
        with self._lock:
            series = self._series.get(self._key(labelvalues))
            return series[-1] if series else 0.0

    def _family(self) -> Family:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        samples: List[Item] = []
        bucket_name, sum_name, count_name = self.name + "_bucket", self.name + "_sum", self.name + "_count"
        sample = self._sample
        for key, series in items:
            cumulative = 0.0
            for le, count in zip(self._le_labels, series):
                cumulative += count
                samples.append(sample(bucket_name, key, cumulative, le))
            samples.append(sample(sum_name, key, series[-2]))
            samples.append(sample(count_name, key, series[-1]))
        return Family(self.name, self.type, self.help, samples, self._header)


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
