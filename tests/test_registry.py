"""Patio's own metrics registry: counters, gauges, histograms, label checking, rendering."""

import math
import threading

import pytest

from patio.metrics.parse import parse
from patio.metrics.registry import Registry
from patio.metrics.write import render


def test_counter_gauge_histogram_semantics():
    registry = Registry()
    requests = registry.counter("patio_x_total", "X.", ("code",))
    requests.inc("200")
    requests.inc("200", amount=2)
    assert requests.value("200") == 3 and requests.value("500") == 0
    with pytest.raises(ValueError):
        requests.inc("200", amount=-1)
    with pytest.raises(ValueError):
        requests.inc("200", "extra")
    gauge = registry.gauge("patio_g", "G.")
    gauge.set(5)
    gauge.dec(amount=2)
    assert gauge.value() == 3
    live = registry.gauge("patio_live", "Live.", func=lambda: 7.0)
    assert live.value() == 7.0
    hist = registry.histogram("patio_h_seconds", "H.", buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 5.0):
        hist.observe(value)
    assert hist.count() == 5
    family = {f.name: f for f in registry.collect()}["patio_h_seconds"]
    buckets = [(dict(s.labels)["le"], s.value) for s in family.samples if s.name.endswith("_bucket")]
    assert buckets == [("0.1", 2.0), ("1", 4.0), ("+Inf", 5.0)]  # le is inclusive, counts cumulative
    assert math.isclose(next(s.value for s in family.samples if s.name.endswith("_sum")), 6.65)


def test_names_are_unique():
    registry = Registry()
    registry.counter("patio_a_total", "A.")
    with pytest.raises(ValueError):
        registry.gauge("patio_a_total", "again")


def test_thread_safe_increments():
    registry = Registry()
    counter = registry.counter("patio_c_total", "C.")

    def work():
        for _ in range(10000):
            counter.inc()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.value() == 80000


def test_rendered_registry_parses_back_unchanged():
    registry = Registry()
    registry.counter("patio_r_total", "Requests.", ("method", "route")).inc("GET", '/a"b\\c')
    registry.histogram("patio_d_seconds", "Durations.", ("route",)).observe(0.2, "/x")
    text = render(registry.collect())
    result = parse(text)
    assert result.dropped == [] and [f.name for f in result.families] == ["patio_r_total", "patio_d_seconds"]
    assert result.families[0].samples[0].labels == (("method", "GET"), ("route", '/a"b\\c'))
