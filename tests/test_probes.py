"""Root, liveness, readiness (engine health cached, storms absorbed), own metrics, OpenAPI/docs."""

import json
import subprocess
import threading

import pytest
from fakes.engine import FakeEngine
from prometheus_client.parser import text_string_to_metric_families
from support import RunningPatio, http_call, http_json, make_settings

from patio import __version__


def patio_for(engine, *args, env=None):
    full = {"INFERENCE_ENGINE": "vllm", "INFERENCE_ENGINE_ENDPOINT": engine.url}
    full.update(env or {})
    return RunningPatio(make_settings(["--scrape-engine-metrics", "false", *args], full))


def test_root_banner():
    with FakeEngine("vllm") as engine, patio_for(engine, env={"INFERENCE_ENGINE_VERSION": "0.33"}) as patio:
        status, body = http_json("GET", patio.url + "/")
    assert status == 200 and body["message"] == "Patio Server is running"
    assert (body["version"], body["engine"], body["engine_version"]) == (__version__, "vllm", "0.33")
    assert body["uptime_seconds"] >= 0


@pytest.mark.parametrize("path", ["/health", "/healthz", "/livez"])
def test_liveness_does_not_depend_on_the_engine(path):
    engine = FakeEngine("vllm")
    engine.stop()
    with patio_for(engine) as patio:
        assert http_json("GET", patio.url + path) == (200, {"status": "ok"})
        assert engine.calls == []


@pytest.mark.parametrize("path", ["/ready", "/readyz"])
def test_readiness_follows_engine_health(path):
    with FakeEngine("sglang") as engine, patio_for(engine, "--ready-cache-ttl", "0") as patio:
        status, body = http_json("GET", patio.url + path)
        assert status == 200 and body["status"] == "ready"
        engine.health_status = 503
        status, body = http_json("GET", patio.url + path)
        assert (status, body["object"], body["type"], body["param"], body["code"]) == (
            503,
            "error",
            "not_ready",
            "engine",
            503,
        )
        assert "engine /health answered 503" in body["message"]
        assert body["checks"] == [{"name": "engine", "ok": False, "detail": "engine /health answered 503"}]
        engine.stop()
        status, body = http_json("GET", patio.url + path)
        assert status == 503 and "unreachable" in body["message"]


def test_readiness_cache_absorbs_probe_storms():
    with FakeEngine("sglang") as engine, patio_for(engine, "--ready-cache-ttl", "30") as patio:
        threads = [threading.Thread(target=http_call, args=("GET", patio.url + "/ready")) for _ in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # SGLang's /health generates a token: 30 probes must not become 30 generations.
        assert len(engine.calls_to("/health", "GET")) == 1


def _metrics(patio):
    status, headers, body = http_call("GET", patio.url + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    return body.decode()


def test_own_metrics_are_valid_and_complete():
    with FakeEngine("vllm") as engine, patio_for(engine, "-I", "pod-7", "-N", "llama") as patio:
        for path in ("/health", "/nope-1", "/nope-2", "/v1/lora_adapters"):
            http_call("GET", patio.url + path)
        text = _metrics(patio)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    info = families["patio_build_info"].samples[0].labels
    assert info == {"version": __version__, "engine": "vllm", "engine_version": "", "pod": "pod-7", "model": "llama"}
    for name in (
        "process_resident_memory_bytes",
        "process_cpu_seconds",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
        "patio_http_request_duration_seconds",
    ):
        assert name in families, name
    requests = {tuple(sorted(s.labels.items())): s.value for s in families["patio_http_requests"].samples}
    assert requests[(("code", "200"), ("method", "GET"), ("route", "/health"))] == 1
    # Junk paths share one label value: bounded cardinality.
    assert requests[(("code", "404"), ("method", "GET"), ("route", "unmatched"))] == 2
    assert not any("nope" in "".join(k for kv in key for k in kv) for key in requests)
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode in (0, 3), check.stderr


def test_openapi_and_docs_only_when_enabled():
    import openapi_spec_validator

    with FakeEngine("vllm") as engine:
        with patio_for(engine) as patio:
            assert http_call("GET", patio.url + "/openapi.json")[0] == 404
            assert http_call("GET", patio.url + "/docs")[0] == 404
        with patio_for(engine, "--enable-fastapi-docs", "--api-key", "k") as patio:
            status, document = http_json("GET", patio.url + "/openapi.json")
            assert status == 200
            openapi_spec_validator.validate(document)
            routes = {(r.method.lower(), r.path) for r in patio.app.routes()}
            documented = {(m, p) for p, methods in document["paths"].items() for m in methods}
            assert documented == routes
            load = document["paths"]["/load_lora_adapter"]["post"]
            assert load["security"] == [{"bearer": []}] and "401" in load["responses"]
            assert "lora_name" in load["requestBody"]["content"]["application/json"]["schema"]["properties"]
            status, headers, html = http_call("GET", patio.url + "/docs")
            assert status == 200 and headers["content-type"].startswith("text/html")
            page = html.decode()
            assert "/load_lora_adapter" in page and "http://" not in page and "https://" not in page
            assert "<script" not in page


def test_every_error_route_answers_the_json_shape():
    with FakeEngine("vllm") as engine, patio_for(engine, "--api-key", "k") as patio:
        cases = [
            ("GET", "/missing", None, {}),
            ("PUT", "/health", None, {}),
            ("POST", "/load_lora_adapter", b"{}", {"Authorization": "Bearer k"}),
            ("POST", "/load_lora_adapter", b"{}", {}),
        ]
        for method, path, body, headers in cases:
            status, _, raw = http_call(method, patio.url + path, body, headers)
            error = json.loads(raw)
            assert set(error) == {"object", "type", "message", "param", "code"} and error["code"] == status >= 400
