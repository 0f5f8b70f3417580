"""Every metric the dashboard and the alert rules use exists in a real scrape of Patio.

The names come from deploy/ (every alert expression, dashboard target and template
variable), never from a list kept here.  Patio runs as the pyz with every component that
exports metrics switched on: the engine scrape (the engine's own /metrics bodies from
../shared/fixtures), LoRA (one load that succeeds, one the engine fails, and an adapters
file with an adapter the engine keeps refusing), downloads, the HTTP server, topology
registered with a real SGLang router (sglang-router from PyPI), and KV events from a real
libzmq publisher in the engine's wire shape into redis-server, with a batch lost on the wire.  Each selector's
sample name must be in the scrape; each label it matches or groups by must be on those
samples, and each exact label value it selects must occur, so an alert on a value Patio
never emits fails here.  Only the labels Prometheus itself attaches to a target
(namespace, pod, ...) are allowed to be absent.
"""

import json
import re
import time
from typing import Dict, Iterator, List, Set, Tuple

import pytest
from deploy_support import Selector, grouping_labels, queries, selectors
from fakes.engine import FakeEngine
from kvevents_peers import Publisher, RedisServer, SglangBlockStored, batch, sglang_batch, stored
from peers.routers import BY_NAME, RealRouter
from prometheus_client.parser import text_string_to_metric_families
from support import PatioProcess, http_call, http_json, shared_path

# Labels the scrape does not carry: Prometheus adds them per target (kubernetes_sd relabeling
# in a PodMonitor or ServiceMonitor), and histogram_quantile's bucket bound.
TARGET_LABELS = frozenset(("namespace", "pod", "instance", "job", "container"))

FIXTURES = {"vllm": "vllm-0.33-single.txt", "sglang": "sglang-0.5.23.txt"}

Samples = Dict[str, List[Dict[str, str]]]
FAST_ADAPTERS_FILE = [
    "--adapters-file-interval",
    "0.05",
    "--adapter-apply-backoff",
    "0.02",
    "--adapter-apply-attempts",
    "2",
]


def _wait(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(dict(sample.labels))
    return found


@pytest.fixture(scope="module")
def router() -> Iterator[RealRouter]:
    """The real SGLang router (sglang-router 0.3.2, from its own venv under .venv-peers/)."""
    r = RealRouter(BY_NAME["sglang-router-0.3.2"])
    yield r
    r.stop()


@pytest.fixture(scope="module", params=sorted(FIXTURES), ids=sorted(FIXTURES))
def scrape(request, router, tmp_path_factory) -> Iterator[Samples]:
    kind = request.param
    engine = FakeEngine(kind)
    engine.metrics_body = shared_path("fixtures", "metrics", FIXTURES[kind]).read_bytes()
    engine.valid_paths = {"/adapters/ok", "/adapters/filed"}  # others: the engine's "adapter not found"
    info = {"data": {"port": engine.port, "worker_type": "regular"}}
    # The adapters file: one adapter Patio can load, one it keeps failing to (reconcile failures).
    adapters_file = tmp_path_factory.mktemp("adapters") / "adapters.json"
    wanted = [{"name": "filed", "source": "/adapters/filed"}, {"name": "broken", "source": "/adapters/missing"}]
    adapters_file.write_text(json.dumps({"adapters": wanted}), encoding="utf-8")
    # KV events: the engine's publisher (real libzmq, the engine's wire shape) and redis-server.
    redis = RedisServer()
    publisher = Publisher(topic=b"kv-events" if kind == "vllm" else b"", replay_shape=kind)
    prefix = kind.upper()
    env = {
        "INFERENCE_ENGINE": kind,
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "TOPO_TYPE": "SGLang",
        "SGL_ROUTER_ENDPOINT": router.url,
        "POD_IP": "127.0.0.1",
        "HEARTBEAT_INTERVAL": "1",
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(redis.port),
        f"{prefix}_ZMQ_ENDPOINT": publisher.endpoint,
        f"{prefix}_ZMQ_REPLAY_ENDPOINT": publisher.replay_endpoint,
    }
    args = [
        *("--instance-info", json.dumps(info), "-N", "tiny", "-I", "pod-a.ns"),
        *("--adapters-file", str(adapters_file), *FAST_ADAPTERS_FILE),
    ]
    patio = PatioProcess(args, env=env)
    try:
        metrics = lambda: http_call("GET", patio.url + "/metrics")[2]  # noqa: E731
        # Events until one arrives (a SUB misses what was sent before it subscribed), then a
        # batch lost on the wire: a sequence gap, recovered by a replay.
        _wait(lambda: publisher.publish(_kv_batch(kind)) >= 0 and b"patio_kv_events_connected 1" in metrics(), "kv")
        _wait(lambda: _counter(metrics(), "patio_kv_events_received_total") > 0, "a KV event received")
        publisher.publish(_kv_batch(kind), drop=True)
        publisher.publish(_kv_batch(kind))
        _wait(lambda: _counter(metrics(), "patio_kv_events_sequence_gaps_total") > 0, "the gap counted")
        load = patio.url + "/load_lora_adapter"
        assert http_json("POST", load, {"lora_name": "ok", "lora_path": "/adapters/ok"})[0] == 200, patio.output()
        refused = http_json("POST", load, {"lora_name": "bad", "lora_path": "/adapters/missing"})
        assert refused[0] >= 400, refused
        _wait(lambda: http_call("GET", patio.url + "/ready")[0] == 200, "readiness (engine + registration)")
        _wait(
            lambda: (
                b'patio_lora_reconcile_failures_total{adapter="broken"}' in http_call("GET", patio.url + "/metrics")[2]
            ),
            "the adapters file's failing adapter to be counted",
        )
        status, _, body = http_call("GET", patio.url + "/metrics")
        assert status == 200
        yield _samples(body.decode("utf-8"))
    finally:
        patio.stop()
        patio.kill()
        engine.stop()
        publisher.close()
        redis.close()


def _kv_batch(kind: str) -> bytes:
    """One BlockStored batch as the engine encodes it."""
    if kind == "vllm":
        return batch([stored([11, 12], list(range(64)))])
    return sglang_batch([SglangBlockStored([11, 12], None, list(range(8)), 4, None)])


def _counter(text: bytes, name: str) -> float:
    """Sum of a family's samples in a scrape."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text.decode("utf-8"))
        for sample in family.samples
        if sample.name == name
    )


def _uses() -> List[Tuple[str, str, object]]:
    return [(where, expr, selector) for where, expr in queries() for selector in selectors(expr)]


def test_the_kit_queries_something():
    assert len(_uses()) > 30


def _check(scrape: Samples, where: str, expr: str, selector: Selector) -> None:
    name = selector.name
    assert name in scrape, f"{where}: {name} is not in Patio's /metrics ({expr})"
    series = scrape[name]
    for matcher in selector.matchers:
        if matcher.label in TARGET_LABELS:
            continue
        with_label = [labels for labels in series if matcher.label in labels]
        assert with_label, f"{where}: {name} has no label {matcher.label!r}"
        if matcher.op == "=":
            values: Set[str] = {labels[matcher.label] for labels in with_label}
            assert matcher.value in values, f"{where}: {name}{{{matcher.label}}} never {matcher.value!r}: {values}"


@pytest.mark.parametrize(
    ("where", "expr", "selector"), _uses(), ids=[f"{where}:{sel.name}" for where, _, sel in _uses()]
)
def test_selector_exists_in_a_real_scrape(scrape: Samples, where, expr, selector):
    _check(scrape, where, expr, selector)


QUERIES = queries()


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[where for where, _ in QUERIES])
def test_grouping_labels_exist_in_a_real_scrape(scrape: Samples, where, expr):
    """``sum by (pod, reason)`` over a family without ``reason`` would draw one line, silently."""
    _check_grouping(scrape, where, expr)


def _check_grouping(scrape: Samples, where: str, expr: str) -> None:
    names = [s.name for s in selectors(expr)]
    for label in grouping_labels(expr):
        if label in TARGET_LABELS:
            continue
        carriers = [name for name in names if any(label in labels for labels in scrape.get(name, []))]
        assert carriers, f"{where}: no selected family has the label {label!r} ({expr})"


@pytest.mark.parametrize(
    ("expr", "error"),
    [
        ("rate(patio_lora_reloads_total[5m])", "is not in Patio's /metrics"),
        ('patio_downloads_total{store="s3"}', "has no label 'store'"),
        ('increase(patio_downloads_total{outcome="failure"}[30m]) > 0', "never 'failure'"),
        ('patio_lora_operations_total{result="error"}', "never 'error'"),
        ("sum by (store) (rate(patio_downloads_total[5m]))", "has the label 'store'"),
    ],
    ids=["unknown-name", "unknown-label", "value-never-emitted", "result-never-emitted", "unknown-grouping-label"],
)
def test_the_check_catches_what_patio_does_not_emit(scrape: Samples, expr, error):
    with pytest.raises(AssertionError, match=re.escape(error)):
        for selector in selectors(expr):
            _check(scrape, "case", expr, selector)
        _check_grouping(scrape, "case", expr)
