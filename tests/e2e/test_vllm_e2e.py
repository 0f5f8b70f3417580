"""Patio in front of a real vLLM (CPU): LoRA on every path, errors, metrics, self-healing,
Patio restarts, S3 delegation.  Scenarios 1-6 of issue 7 share one vLLM; the self-healing
scenario restarts it and so runs last."""

import json
import statistics
import subprocess
import time

import pytest
from conftest import get, post_json, record_timing
from prometheus_client.parser import text_string_to_metric_families

LOAD_PATHS = ["/load_lora_adapter", "/v1/lora_adapter/load", "/v1/load_lora_adapter"]
UNLOAD_PATHS = ["/unload_lora_adapter", "/v1/lora_adapter/unload", "/v1/unload_lora_adapter"]


def complete(vllm, model, prompt="Hello world", headers=None):
    status, raw = post_json(
        vllm.url + "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0}, headers
    )
    assert status == 200, raw
    return json.loads(raw)["choices"][0]["text"]


def engine_adapters(vllm, headers=None):
    status, raw = get(vllm.url + "/v1/models", headers=headers)
    assert status == 200, raw
    return {m["id"]: m["root"] for m in json.loads(raw)["data"] if m.get("parent")}


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_1_load_through_every_path_then_complete(vllm, assets, patio_factory):
    patio = patio_factory(vllm.url)
    path_a = str(assets / "adapters" / "a")
    for load_path, unload_path in zip(LOAD_PATHS, UNLOAD_PATHS):
        status, body = patio.post(load_path, {"lora_name": "a", "lora_path": path_a})
        assert (status, body["status"]) == (200, "success"), body
        assert complete(vllm, "a")
        view = patio.adapters()["a"]
        assert view["state"] == "loaded" and view["engine_confirmed"] is True
        assert engine_adapters(vllm) == {"a": path_a}
        status, body = patio.post(unload_path, {"lora_name": "a"})
        assert status == 200, body
        assert engine_adapters(vllm) == {}


def test_1b_engine_unset_is_learned_from_the_real_vllm(vllm, assets, patio_factory):
    """Issue 26: INFERENCE_ENGINE unset (RoleBasedGroup's default engine is SGLang) in front of a real
    vLLM: Patio asks GET /version (vllm/entrypoints/serve/instrumentator/basic.py), speaks vLLM's
    LoRA API and shows vLLM's own version.  Before, the load went to SGLang's /load_lora_adapter
    and came back 404 Not Found."""
    status, raw = get(vllm.url + "/version")
    assert status == 200
    version = json.loads(raw)["version"]
    patio = patio_factory(vllm.url, env={"INFERENCE_ENGINE": ""})
    assert wait_until(lambda: patio.get_json("/")[1]["engine"] == "vllm", 20)
    assert patio.get_json("/")[1]["engine_version"] == version
    path_a = str(assets / "adapters" / "a")
    status, body = patio.post("/load_lora_adapter", {"lora_name": "a", "lora_path": path_a})
    assert (status, body["status"]) == (200, "success"), body
    assert engine_adapters(vllm) == {"a": path_a}
    assert patio.post("/unload_lora_adapter", {"lora_name": "a"})[0] == 200
    assert engine_adapters(vllm) == {}


def test_2_duplicates_bad_path_unknown_unload(vllm, assets, patio_factory, tmp_path):
    patio = patio_factory(vllm.url)
    path_a, path_b = str(assets / "adapters" / "a"), str(assets / "adapters" / "b")
    assert patio.post("/load_lora_adapter", {"lora_name": "a", "lora_path": path_a})[0] == 200
    status, body = patio.post("/load_lora_adapter", {"lora_name": "a", "lora_path": path_a})
    assert status == 200 and "already loaded" in body["message"]
    status, body = patio.post("/load_lora_adapter", {"lora_name": "a", "lora_path": path_b})
    assert (status, body["type"]) == (409, "conflict")
    empty = tmp_path / "not-an-adapter"
    empty.mkdir()
    status, body = patio.post("/load_lora_adapter", {"lora_name": "bad", "lora_path": str(empty)})
    assert (status, body["type"]) == (404, "not_found"), body
    assert "No adapter found" in body["message"]  # vLLM's own words
    status, body = patio.post("/unload_lora_adapter", {"lora_name": "never-loaded"})
    assert (status, body["type"]) == (404, "not_found")
    assert "cannot be found" in body["message"]
    assert patio.post("/unload_lora_adapter", {"lora_name": "a"})[0] == 200


def _scrape(patio):
    status, raw = get(patio.url + "/metrics")
    assert status == 200
    return raw.decode()


def _value(text, name):
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} missing")


def _count(text, name):
    return sum(1 for line in text.splitlines() if line.startswith(name + "{"))


@pytest.mark.parametrize(
    "scheme,pairs,histogram",
    [
        (
            "patio",
            [
                ("patio:input_tokens_total", "vllm:prompt_tokens_total"),
                ("patio:output_tokens_total", "vllm:generation_tokens_total"),
            ],
            ("patio:time_to_first_token_seconds_bucket", "vllm:time_to_first_token_seconds_bucket"),
        ),
        (
            "aibrix",
            [
                ("aibrix:prompt_tokens_total", "vllm:prompt_tokens_total"),
                ("aibrix:generation_tokens_total", "vllm:generation_tokens_total"),
            ],
            ("aibrix:time_to_first_token_seconds_bucket", "vllm:time_to_first_token_seconds_bucket"),
        ),
        (
            "kthena",
            [("kthena:generation_tokens_total", "vllm:generation_tokens_total")],
            ("kthena:e2e_request_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket"),
        ),
    ],
)
def test_3_metrics_each_scheme(vllm, patio_factory, scheme, pairs, histogram):
    for prompt in ("Hello world", "The quick brown fox", "One two three"):
        complete(vllm, vllm_model(vllm), prompt)
    patio = patio_factory(vllm.url, env={"METRICS_SCHEME": scheme})
    text = _scrape(patio)
    for renamed, raw in pairs:
        assert _value(text, renamed) == _value(text, raw) > 0
    assert _count(text, histogram[0]) == _count(text, histogram[1]) > 5
    assert "patio_engine_up 1" in text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode != 1, check.stderr[-2000:]


def vllm_model(vllm):
    _, raw = get(vllm.url + "/v1/models")
    return next(m["id"] for m in json.loads(raw)["data"] if not m.get("parent"))


def test_3b_dashboard_and_alert_engine_names_in_a_real_vllm_scrape(vllm, patio_factory):
    """Every engine family (``patio:``) the dashboard and alert rules under deploy/ read is in
    Patio's /metrics in front of this real vLLM (tests/test_deploy_metrics.py checks every name
    against vLLM 0.33's and SGLang's own metric bodies)."""
    from deploy_support import queries, selectors

    for prompt in ("Hello world", "The quick brown fox"):
        complete(vllm, vllm_model(vllm), prompt)
    text = _scrape(patio_factory(vllm.url))
    names = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    used = {s.name for _, expr in queries() for s in selectors(expr) if s.name.startswith("patio:")}
    assert len(used) >= 8 and used <= names, sorted(used - names)


def test_3c_the_endpoint_picker_reads_through_patio_what_it_reads_from_this_vllm(vllm, assets, patio_factory):
    """The GIE/llm-d endpoint picker's own extraction (tests/epp_replay.py, replayed from
    llm-d-router) over Patio's router view agrees with the same picker reading this real vLLM
    directly with its vLLM config: queue, running, cache geometry and LoRA capacity; the KV
    utilization is a 0-1 fraction either way."""
    from test_epp_replay import engine_extractor, observed, patio_extractor

    patio = patio_factory(vllm.url)
    status, body = patio.post("/v1/load_lora_adapter", {"lora_name": "epp-a", "lora_path": str(assets / "adapters/a")})
    assert status == 200, body
    complete(vllm, "epp-a", "Hello world")
    through, direct = patio_extractor(), engine_extractor("vllm")
    through.poll(_scrape(patio))
    _, raw = get(vllm.url + "/metrics")
    direct.poll(raw.decode())
    assert not through.errors, through.errors
    seen, own = observed(through.metrics), observed(direct.metrics)
    fields = ("queue", "running", "block", "blocks", "max")
    assert {k: seen[k] for k in fields} == {k: own[k] for k in fields}
    assert own["block"] > 0 and own["blocks"] > 0 and own["max"] >= 1
    assert 0.0 <= seen["kv"] <= 1.0 and 0.0 <= own["kv"] <= 1.0
    status, _ = patio.post("/v1/unload_lora_adapter", {"lora_name": "epp-a"})
    assert status == 200


def test_5_patio_restart_rebuilds_its_view_without_reloading(vllm, assets, patio_factory, tmp_path):
    state = tmp_path / "shared-state"
    first = patio_factory(vllm.url, state_dir=state)
    for name in ("a", "b"):
        assert (
            first.post("/load_lora_adapter", {"lora_name": name, "lora_path": str(assets / "adapters" / name)})[0]
            == 200
        )
    assert first.stop() == 0
    second = patio_factory(vllm.url, state_dir=state)
    assert wait_until(lambda: all(a["engine_confirmed"] for a in second.adapters().values()), 20)
    assert set(second.adapters()) == {"a", "b"}
    text = _scrape(second)
    assert "patio_lora_reconcile_reloads_total 0" in text
    assert 'patio_lora_operations_total{op="load"' not in text
    assert engine_adapters(vllm) == {n: str(assets / "adapters" / n) for n in ("a", "b")}
    for name in ("a", "b"):
        assert second.post("/unload_lora_adapter", {"lora_name": name})[0] == 200


def test_6_s3_delegation(vllm, assets, patio_factory, moto_s3, tmp_path):
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=moto_s3,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket="adapters")
    for path in (assets / "adapters" / "b").iterdir():
        s3.upload_file(str(path), "adapters", f"b/{path.name}")
    patio = patio_factory(
        vllm.url,
        env={
            "AWS_ENDPOINT_URL": moto_s3,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        },
    )
    status, body = patio.post("/load_lora_adapter", {"lora_name": "s3b", "lora_path": "s3://adapters/b/"})
    assert status == 200, body
    local = body["lora_path"]
    assert engine_adapters(vllm)["s3b"] == local
    assert sorted(p.name for p in __import__("pathlib").Path(local).iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in (assets / "adapters" / "b").iterdir()
    )
    assert patio.post("/load_lora_adapter", {"lora_name": "b", "lora_path": str(assets / "adapters" / "b")})[0] == 200
    assert complete(vllm, "s3b") == complete(vllm, "b")
    assert patio.post("/unload_lora_adapter", {"lora_name": "s3b"})[0] == 200
    assert not __import__("pathlib").Path(local).exists()
    assert patio.post("/unload_lora_adapter", {"lora_name": "b"})[0] == 200


def _ms(seconds):
    return round(seconds * 1000, 1)


def test_timings_patio_vs_direct(vllm, assets, patio_factory):
    """Wall time of each LoRA call through Patio vs the same call straight to vLLM.

    Patio's load also reads the engine's /v1/models (to confirm the adapter) and both calls
    fsync its state file; the direct /v1/models time is recorded so the difference can be
    attributed.  The two cores are shared, so the minimum is recorded beside the median: it
    is the cost without interference from other processes."""
    patio = patio_factory(vllm.url)
    path = str(assets / "adapters" / "a")
    times = {key: [] for key in ("load_direct", "load_patio", "unload_direct", "unload_patio", "models_direct")}

    def timed(key, call):
        started = time.perf_counter()
        status = call()[0]
        times[key].append(time.perf_counter() - started)
        assert status == 200, key

    for _ in range(20):
        timed(
            "load_direct", lambda: post_json(vllm.url + "/v1/load_lora_adapter", {"lora_name": "d", "lora_path": path})
        )
        timed("models_direct", lambda: get(vllm.url + "/v1/models"))
        timed("unload_direct", lambda: post_json(vllm.url + "/v1/unload_lora_adapter", {"lora_name": "d"}))
        timed("load_patio", lambda: patio.post("/load_lora_adapter", {"lora_name": "a", "lora_path": path}))
        timed("unload_patio", lambda: patio.post("/unload_lora_adapter", {"lora_name": "a"}))
    for key, samples in times.items():
        record_timing(f"{key}_ms_median", _ms(statistics.median(samples)))
        record_timing(f"{key}_ms_min", _ms(min(samples)))
    for op in ("load", "unload"):
        added = statistics.median(times[f"{op}_patio"]) - statistics.median(times[f"{op}_direct"])
        record_timing(f"{op}_patio_added_ms_median", _ms(added))
        record_timing(f"{op}_patio_added_ms_min", _ms(min(times[f"{op}_patio"]) - min(times[f"{op}_direct"])))


def test_4_self_healing_after_engine_restart(vllm, assets, patio_factory):
    patio = patio_factory(vllm.url)
    for name in ("a", "b"):
        assert (
            patio.post("/load_lora_adapter", {"lora_name": name, "lora_path": str(assets / "adapters" / name)})[0]
            == 200
        )
    before = {name: complete(vllm, name) for name in ("a", "b")}
    assert before["a"] != before["b"]
    vllm.restart()
    record_timing("vllm_restart_ready_seconds", vllm.ready_seconds)
    healed = time.monotonic()
    assert wait_until(lambda: set(engine_adapters(vllm)) == {"a", "b"}, 30), "Patio did not reload the adapters"
    record_timing("self_heal_seconds_after_engine_ready", round(time.monotonic() - healed, 1))
    after = {name: complete(vllm, name) for name in ("a", "b")}
    assert after == before
    assert "patio_lora_reconcile_reloads_total 2" in _scrape(patio)
