"""Which engine is there (issue 26): INFERENCE_ENGINE unset -> what the engine answers as.

The answers are the engines' own shapes, read from their source (patio/engines/detect.py
cites each): vLLM's ``GET /version`` -> ``{"version": ...}``; SGLang's ``GET /server_info``
/ ``/get_server_info`` -> its server args plus ``"version"``; vLLM's dev-mode
``/server_info`` -> ``{"vllm_config", "vllm_env", "system_env"}``, which is not SGLang's.
"""

import json
import time
from typing import Any, Callable, Dict, Tuple

import pytest
from fakes.engine import FakeEngine
from support import RunningPatio, http_json, make_settings

from patio.config import load_settings
from patio.engines.detect import EngineKind, Identity, identify, read_answer

SGLANG_INFO = {"model_path": "Qwen/Qwen3-0.6B", "tp_size": 1, "internal_states": [{}], "version": "0.5.3.post3"}
VLLM_DEV_INFO = {"vllm_config": "model='x'", "vllm_env": {}, "system_env": {}}

ANSWERS = [
    # (id, kind asked, route, status, body, expected (kind, version) or None)
    ("vllm_version", "vllm", "/version", 200, {"version": "0.11.0"}, ("vllm", "0.11.0")),
    ("vllm_dev_version", "vllm", "/version", 200, {"version": "0.11.1.dev7+g1234"}, ("vllm", "0.11.1.dev7+g1234")),
    ("sglang_server_info", "sglang", "/server_info", 200, SGLANG_INFO, ("sglang", "0.5.3.post3")),
    ("sglang_old_name", "sglang", "/get_server_info", 200, SGLANG_INFO, ("sglang", "0.5.3.post3")),
    ("vllm_dev_server_info_is_not_sglang", "sglang", "/server_info", 200, VLLM_DEV_INFO, None),
    ("sglang_info_is_not_vllm", "vllm", "/version", 200, SGLANG_INFO, None),
    ("not_found", "vllm", "/version", 404, {"detail": "Not Found"}, None),
    ("unauthorized", "sglang", "/server_info", 401, {"error": "Unauthorized"}, None),
    ("not_json", "vllm", "/version", 200, b"<html>proxy</html>", None),
    ("a_list", "vllm", "/version", 200, [1, 2], None),
    ("deep_json", "vllm", "/version", 200, b"[" * 5000 + b"]" * 5000, None),
    ("version_not_a_string", "vllm", "/version", 200, {"version": 11}, ("vllm", "")),
]


@pytest.mark.parametrize("kind,route,status,body,expected", [a[1:] for a in ANSWERS], ids=[a[0] for a in ANSWERS])
def test_read_answer(kind, route, status, body, expected):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    found = read_answer(kind, route, status, raw)
    assert (None if found is None else (found.kind, found.version)) == expected


def _fetcher(answers: Dict[str, Tuple[int, Any]]) -> Callable[[str], Tuple[int, bytes]]:
    def fetch(route: str) -> Tuple[int, bytes]:
        status, body = answers.get(route, (404, {"detail": "Not Found"}))
        return status, json.dumps(body).encode()

    return fetch


def test_identify_asks_each_route_until_one_answers():
    asked = []
    fetch = _fetcher({"/get_server_info": (200, SGLANG_INFO)})

    def recording(route: str) -> Tuple[int, bytes]:
        asked.append(route)
        return fetch(route)

    found = identify(recording)
    assert found == Identity("sglang", "0.5.3.post3", "GET /get_server_info")
    assert asked == ["/version", "/server_info", "/get_server_info"]


KINDS = [
    # (id, env, engine's answers, expected name, version, mismatch?)
    ("unset_vllm_found", {}, {"/version": (200, {"version": "0.11.0"})}, "vllm", "0.11.0", False),
    ("unset_sglang_found", {}, {"/server_info": (200, SGLANG_INFO)}, "sglang", "0.5.3.post3", False),
    ("unset_nothing_answers", {}, {}, "sglang", "v0.5.3", False),  # RoleBasedGroup's documented defaults
    (
        "set_and_agreeing",
        {"INFERENCE_ENGINE": "vllm"},
        {"/version": (200, {"version": "0.9.2"})},
        "vllm",
        "0.9.2",
        False,
    ),
    (
        "set_wins_over_the_engine",
        {"INFERENCE_ENGINE": "sglang"},
        {"/version": (200, {"version": "0.9.2"})},
        "sglang",
        "0.9.2",
        True,
    ),
    (
        "version_set_wins",
        {"INFERENCE_ENGINE_VERSION": "v9"},
        {"/version": (200, {"version": "0.9.2"})},
        "vllm",
        "v9",
        False,
    ),
    ("vllm_set_unknown_version_is_not_sglangs", {"INFERENCE_ENGINE": "vllm"}, {}, "vllm", "", False),
]


@pytest.mark.parametrize("env,answers,name,version,mismatch", [k[1:] for k in KINDS], ids=[k[0] for k in KINDS])
def test_engine_kind(env, answers, name, version, mismatch):
    kind = EngineKind(load_settings([], env).core, fetch=_fetcher(answers))
    kind.identify()
    assert (kind.name, kind.version, kind.mismatch() is not None) == (name, version, mismatch)
    assert kind.spec.name == name and kind.spec.load_path == (
        "/v1/load_lora_adapter" if name == "vllm" else "/load_lora_adapter"
    )
    if mismatch:
        assert "INFERENCE_ENGINE=sglang" in kind.spec.lora_hint and "vLLM 0.9.2" in kind.spec.lora_hint


def test_an_engine_that_never_says_is_asked_a_bounded_number_of_times_until_it_flips():
    asked = []
    kind = EngineKind(load_settings([], {}).core, fetch=lambda route: (asked.append(route), (404, b"{}"))[1])
    for _ in range(20):
        kind.identify()
    assert len(asked) == 3 * 3  # three healthy probes ask the three routes, then it stops asking
    kind.on_health(False)
    kind.identify()
    assert len(asked) == 12  # after the engine was down, it is asked again


def _wait(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _patio(engine: FakeEngine, env: Dict[str, str]) -> RunningPatio:
    base = {"INFERENCE_ENGINE_ENDPOINT": engine.url, "PATIO_ENGINE_HEALTH_INTERVAL": "0.1"}
    return RunningPatio(make_settings(["--scrape-engine-metrics", "false", "--ready-cache-ttl", "0"], {**base, **env}))


def test_unset_engine_is_learned_and_a_vllm_load_goes_to_vllms_route(caplog):
    """RoleBasedGroup's default is SGLang; the engine is vLLM: before, the load went to SGLang's
    /load_lora_adapter and came back 404 ``Not Found`` on lora_path."""
    caplog.set_level("INFO", logger="patio.engine")
    with FakeEngine("vllm") as engine:
        engine.version = "0.11.0"
        with _patio(engine, {}) as patio:
            banner = _wait(
                lambda: (lambda b: b if b[1]["engine"] == "vllm" else None)(http_json("GET", patio.url + "/"))
            )
            assert banner[1]["engine_version"] == "0.11.0"
            status, body = http_json(
                "POST", patio.url + "/load_lora_adapter", {"lora_name": "sql", "lora_path": "/m/sql"}
            )
            assert status == 200, body
            assert [c.json()["lora_path"] for c in engine.calls_to("/v1/load_lora_adapter")] == ["/m/sql"]
            assert engine.calls_to("/load_lora_adapter") == []
            assert http_json("GET", patio.url + "/ready")[0] == 200
    assert any("is vLLM 0.11.0 (GET /version)" in r.getMessage() for r in caplog.records)


def test_a_mismatch_is_reported_in_ready_and_in_the_error():
    with FakeEngine("vllm") as engine:
        engine.version = "0.11.0"
        with _patio(engine, {"INFERENCE_ENGINE": "sglang"}) as patio:
            status, body = _wait(
                lambda: (lambda r: r if r[0] == 503 and r[1]["param"] == "engine-kind" else None)(
                    http_json("GET", patio.url + "/ready")
                )
            )
            assert "INFERENCE_ENGINE=sglang but the engine" in body["message"] and "vLLM 0.11.0" in body["message"]
            # The setting still wins (SGLang's route), and the error says why it cannot work.
            status, body = http_json("POST", patio.url + "/load_lora_adapter", {"lora_name": "a", "lora_path": "/m/a"})
            assert status >= 400 and "answers as vLLM 0.11.0" in body["message"], body
            assert len(engine.calls_to("/load_lora_adapter")) >= 1


def test_metrics_follow_the_engine_found():
    with FakeEngine("vllm") as engine:
        engine.version = "0.11.0"
        engine.metrics_body = b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 3\n"
        env = {"INFERENCE_ENGINE_ENDPOINT": engine.url, "PATIO_ENGINE_HEALTH_INTERVAL": "0.1"}
        with RunningPatio(make_settings([], env)) as patio:
            _wait(lambda: http_json("GET", patio.url + "/")[1]["engine"] == "vllm")
            from support import http_call

            text = http_call("GET", patio.url + "/metrics")[2].decode()
    assert "patio:num_requests_running 3" in text
    assert 'engine="vllm"' in text and 'engine_version="0.11.0"' in text
