"""The alert rules in a real Prometheus server (Debian package) scraping a real Patio (the pyz).

promtool's unit tests feed synthetic series; here the server loads deploy/prometheus/patio-alerts.yml,
scrapes Patio every second with the target labels a PodMonitor adds (namespace, pod), and
Patio is driven into the states the alerts watch: a LoRA load the engine refuses, an adapters
file naming an adapter the engine refuses, a download that fails, an engine restart that loses
an adapter, garbage in the engine's metrics, an unreachable router and Redis.  Every rule must
evaluate without error, and each alert must reach exactly the state expected: firing for the
alerts without a ``for`` duration, pending for those with one, inactive for the rest (the
engine stays healthy).
"""

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from typing import Any, Dict, Iterator, List

import pytest
from deploy_support import ALERTS, alert_rules
from fakes.engine import FakeEngine
from support import PatioProcess, free_port, http_json, shared_path

PROMETHEUS = shutil.which("prometheus")
TARGET = {"namespace": "llm", "pod": "vllm-0"}

# alert -> (expected state, labels the alert must carry beyond the target's)
EXPECTED = {
    "PatioEngineDown": ("inactive", {}),
    "PatioEngineMetricsScrapeFailing": ("inactive", {}),
    "PatioEngineMetricsDroppedLines": ("pending", {}),
    "PatioRouterRegistrationLost": ("pending", {}),
    "PatioLoRAReconcileReloads": ("firing", {}),
    "PatioLoRAOperationsFailing": ("firing", {"op": "load", "result": "failed"}),
    "PatioDownloadFailures": ("firing", {"kind": "http", "outcome": "failed"}),
    "PatioLoRAReconcileFailures": ("firing", {"adapter": "broken"}),
    "PatioConnectionsRefused": ("inactive", {}),
    "PatioKVEventGaps": ("inactive", {}),
    "PatioKVEventsDisconnected": ("pending", {}),
    "PatioRouterAuthFailures": ("inactive", {}),
    "PatioKVEventsRedisRejecting": ("inactive", {}),
    "PatioKVEventsBacklogDropped": ("inactive", {}),
    "PatioKVEventsStreamRestarts": ("inactive", {}),
    # The fake engine's capture: 1 request waiting, KV 7%.
    "PatioEngineQueueGrowing": ("inactive", {}),
    "PatioKVCachePinned": ("inactive", {}),
}


def _api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())["data"]


def _wait(predicate, what: str, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[Dict[str, Any]]:
    if PROMETHEUS is None:
        pytest.fail("the prometheus server binary is missing: apt-get install prometheus (tests/run.sh does)")
    work = tmp_path_factory.mktemp("prometheus-alerts")
    engine = FakeEngine("vllm")
    body = shared_path("fixtures", "metrics", "vllm-0.33-single.txt").read_bytes()
    engine.metrics_body = body + b"vllm:broken_line{ 1\n"  # one unparseable line per scrape
    engine.valid_paths = {"/adapters/ok"}
    adapters_file = work / "adapters.json"
    adapters_file.write_text(json.dumps({"adapters": [{"name": "broken", "source": "/adapters/missing"}]}))
    dead = free_port()  # nothing listens: the router and Redis are unreachable
    env = {
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "PATIO_ENGINE_HEALTH_INTERVAL": "0.2",
        "PATIO_MODELS_ROOT": str(work / "models"),
        "TOPO_TYPE": "SGLang",
        "SGL_ROUTER_ENDPOINT": f"127.0.0.1:{dead}",
        "POD_IP": "127.0.0.1",
        "HEARTBEAT_INTERVAL": "1",
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(dead),
    }
    info = {"data": {"port": engine.port, "worker_type": "regular"}}
    args = [
        *("--instance-info", json.dumps(info), "-N", "tiny", "-I", "pod-a.ns"),
        *("--adapters-file", str(adapters_file), "--adapters-file-interval", "0.05"),
        *("--adapter-apply-backoff", "0.02", "--adapter-apply-attempts", "2", "--lora-reconcile-interval", "1"),
    ]
    patio = PatioProcess(args, env=env)
    port = free_port()
    labels = ", ".join(f"{k}: {v}" for k, v in TARGET.items())
    (work / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{ALERTS}']\n"
        "scrape_configs:\n  - job_name: patio\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{patio.port}']\n        labels: {{{labels}}}\n"
    )
    prometheus = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait(lambda: _api(port, "query", query='up{job="patio"}')["result"], "Prometheus scraping Patio")
        # Healthy baseline scraped first, so every counter below rises between two scrapes.
        _wait(lambda: _api(port, "query", query="patio_engine_healthy == 1")["result"], "a healthy engine")
        load = patio.url + "/load_lora_adapter"
        assert http_json("POST", load, {"lora_name": "ok", "lora_path": "/adapters/ok"})[0] == 200
        assert http_json("POST", load, {"lora_name": "bad", "lora_path": "/adapters/missing"})[0] >= 400
        download = {"model_uri": engine.url + "/no-such-model.bin", "local_dir": "missing"}
        assert http_json("POST", patio.url + "/v1/model/download", download)[0] == 202
        time.sleep(1.5)
        engine.restart(forget=True)  # the engine loses "ok": Patio's reconcile loads it again
        # Let every alert reach its expected state (or time out); each test then checks one.
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not _settled(port):
            time.sleep(0.5)
        yield {"port": port, "patio": patio, "prometheus": prometheus}
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(10)
        except subprocess.TimeoutExpired:
            prometheus.kill()
        patio.stop()
        patio.kill()
        engine.stop()
        shutil.rmtree(work, ignore_errors=True)


def _alerts(port: int) -> List[Dict[str, Any]]:
    return [a for a in _api(port, "alerts")["alerts"] if a["labels"].get("alertname", "").startswith("Patio")]


def _settled(port: int) -> bool:
    states = {(a["labels"]["alertname"], a["state"]) for a in _alerts(port)}
    return all((alert, state) in states for alert, (state, _) in EXPECTED.items() if state != "inactive")


def test_every_rule_is_loaded_and_evaluates_cleanly(world):
    port = world["port"]
    rules = [r for g in _api(port, "rules")["groups"] for r in g["rules"]]
    assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()} == set(EXPECTED)
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))


@pytest.mark.parametrize("alert", sorted(EXPECTED), ids=sorted(EXPECTED))
def test_alert_state_against_a_real_patio(world, alert):
    port = world["port"]
    state, labels = EXPECTED[alert]

    matching = [a for a in _alerts(port) if a["labels"]["alertname"] == alert]
    if state == "inactive":
        assert matching == [], matching
        return
    found = [a for a in matching if a["state"] == state]
    assert found, f"{alert} is not {state}: {matching}"
    found = found[0]
    for key, value in {**TARGET, **labels}.items():
        assert found["labels"].get(key) == value, found["labels"]
    assert found["annotations"]["summary"] and "{{" not in found["annotations"]["description"]
