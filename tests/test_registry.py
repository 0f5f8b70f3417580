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


def test_an_unchanged_metric_hands_out_its_last_family_and_an_update_never_goes_unseen():
    """A scrape reuses the families of metrics nobody updated since the last one."""
    registry = Registry()
    counter = registry.counter("patio_u_total", "U.", ("code",))
    gauge = registry.gauge("patio_u", "U.")
    registry.gauge("patio_u_live", "U.", func=lambda: float(len(calls)))
    hist = registry.histogram("patio_u_seconds", "U.", buckets=(1.0,))
    calls = []
    first = {f.name: f for f in registry.collect()}
    again = {f.name: f for f in registry.collect()}
    assert all(again[name] is first[name] for name in ("patio_u_total", "patio_u", "patio_u_seconds"))
    counter.inc("200")
    gauge.set(0.0)  # the value it had: nothing changed
    calls.append(1)
    hist.observe(0.5)
    third = {f.name: f for f in registry.collect()}
    assert third["patio_u"] is first["patio_u"]
    assert [s.value for s in third["patio_u_total"].samples] == [1.0]
    assert [s.value for s in third["patio_u_live"].samples] == [1.0]  # read at every scrape
    assert third["patio_u_seconds"].samples[-1].value == 1.0
    gauge.set(2.0)
    assert render(registry.collect()).count("patio_u 2\n") == 1


def test_updates_racing_a_scrape_show_at_the_next_one():
    registry = Registry()
    counter = registry.counter("patio_race_total", "R.")
    stop = threading.Event()

    def work():
        while not stop.is_set():
            counter.inc()

    worker = threading.Thread(target=work)
    worker.start()
    try:
        for _ in range(200):
            registry.collect()
    finally:
        stop.set()
        worker.join()
    final = counter.value()
    assert [s.value for s in registry.collect()[0].samples] == [final]
