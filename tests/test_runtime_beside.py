"""The engine Patio runs beside, as a runtime model: listed under its served name, activate
and deactivate refused, sleep and wake with the pod taken out of service around them.

A real router (smg 1.13.0, the PyPI build: tests/peers/routers.py) sees the worker leave
before the sleep and come back after the wake; ``/ready`` answers 503 ``asleep`` while
``/health`` stays 200; LoRA reconcile loads nothing into the sleeping engine (the fake
vLLM dies if anything is loaded into it asleep) and reloads what it lost once awake.
The engine is the fake vLLM (tests/runtime_engines) in dev mode with its sleep mode on.
"""

import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from peers.routers import BY_NAME, RealRouter
from runtime_support import EngineProcess, runtime_env, wait_for
from support import RunningPatio, http_call, http_json, make_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def router() -> Iterator[RealRouter]:
    r = RealRouter(BY_NAME["smg-1.13.0"])
    yield r
    r.stop()


@pytest.fixture
def engine() -> Iterator[EngineProcess]:
    e = EngineProcess("vllm", "--enable-sleep-mode", "--fake-token-delay", "0.02", env={"FAKE_SLEEP_MODE": "1"})
    yield e
    e.stop()


def beside(tmp: Path, engine: EngineProcess, router: RealRouter, **extra: str) -> RunningPatio:
    env = runtime_env(
        tmp,
        INFERENCE_ENGINE_ENDPOINT=engine.url,
        TOPO_TYPE="SGLang",
        SGL_ROUTER_ENDPOINT=router.url,
        POD_IP="127.0.0.1",
        WORKER_PORT=str(engine.port),
        HEARTBEAT_INTERVAL="0.5",
        PATIO_LORA_RECONCILE_INTERVAL="0.2",
        PATIO_ADAPTER_DIR=str(tmp / "adapters"),
        PATIO_SCRAPE_ENGINE_METRICS="false",
        **extra,
    )
    return RunningPatio(make_settings(env=env)).__enter__()


def post(patio: RunningPatio, route: str, body: Dict[str, Any]) -> Any:
    return http_json("POST", patio.url + "/v1/runtime/models/" + route, body, timeout=30)


def routable(router: RealRouter, engine: EngineProcess) -> bool:
    return router.routable(f"http://127.0.0.1:{engine.port}") is not None


def loads_after(engine: EngineProcess, index: int) -> List[Dict[str, Any]]:
    return [e for e in engine.requests()[index:] if e["target"] == "/v1/load_lora_adapter"]


def metrics(patio: RunningPatio) -> str:
    return http_call("GET", patio.url + "/metrics")[2].decode()


def test_listed_under_its_served_name_and_never_activated_or_deactivated(
    tmp_path: Path, engine: EngineProcess, router: RealRouter
) -> None:
    patio = beside(tmp_path, engine, router)
    try:
        # The served name is asked of the engine once its /health answered (the health watch).
        wait_for(lambda: http_json("GET", patio.url + "/v1/runtime/models")[1]["models"], 10, "the engine listed")
        status, body = http_json("GET", patio.url + "/v1/runtime/models")
        assert status == 200
        assert body["models"] == [
            {
                "model_name": "m",
                "port": engine.port,
                "ipc_name": "",
                "phase": "active",
                "ready": True,
                "kv_used_bytes": 0,
                "kv_total_bytes": 0,
            }
        ]
        status, answer = post(patio, "activate", {"model_name": "m", "artifact_url": "hf://o/m"})
        assert status == 409 and answer["status"] == "error" and "engine Patio runs beside" in answer["message"]
        status, answer = post(patio, "deactivate", {"model_name": "m", "mode": "stop"})
        assert status == 409 and "cannot deactivate" in answer["message"]
        assert engine.alive()
        snap = http_json("GET", patio.url + "/v1/runtime/snapshot")[1]["models"][0]
        assert (snap["model_name"], snap["alive"], snap["restart_count"], snap["request_metrics_observed"]) == (
            "m",
            True,
            0,
            True,
        )
    finally:
        patio.stop()
    assert engine.alive(), "Patio's shutdown never stops the engine beside it"


def test_sleep_takes_the_pod_out_and_wake_brings_it_back(
    tmp_path: Path, engine: EngineProcess, router: RealRouter
) -> None:
    (tmp_path / "lora-a").mkdir()
    patio = beside(tmp_path, engine, router)
    try:
        status, _ = http_json(
            "POST", patio.url + "/load_lora_adapter", {"lora_name": "a", "lora_path": str(tmp_path / "lora-a")}
        )
        assert status == 200
        wait_for(lambda: routable(router, engine), 15, "registered with the router")
        assert http_call("GET", patio.url + "/ready")[0] == 200
        mark = len(engine.requests())
        status, body = post(patio, "sleep", {"model_name": "m", "level": 1, "operation_id": "s1"})
        assert (status, body["applied"], body["phase"]) == (200, True, "sleeping"), body
        assert not routable(router, engine), "the worker left the router before the engine slept"
        status, ready = http_json("GET", patio.url + "/ready")
        assert (status, ready["param"]) == (503, "asleep") and "asleep (level 1)" in ready["message"]
        assert http_call("GET", patio.url + "/health")[0] == 200
        assert 'patio_engine_sleeping{model="m"} 1' in metrics(patio)
        # The engine loses its adapters while asleep; reconcile (every 0.2 s) must not reload them now.
        http_json("POST", engine.url + "/fake/forget", {})
        time.sleep(1.5)
        assert engine.alive() and loads_after(engine, mark) == []
        assert http_json("GET", patio.url + "/v1/runtime/models")[1]["models"][0]["phase"] == "sleeping"
        time.sleep(1.0)  # the heartbeat keeps away while asleep
        assert not routable(router, engine)
        status, body = post(patio, "wake", {"model_name": "m", "operation_id": "w1"})
        assert (status, body["applied"], body["phase"]) == (200, True, "active"), body
        # rejoin() returns once the router accepted the worker; it routes to it once its add job
        # has checked the worker's health, a moment later (docs/topology.md).
        wait_for(lambda: routable(router, engine), 10, "registered again after the wake")
        assert http_call("GET", patio.url + "/ready")[0] == 200
        wait_for(lambda: loads_after(engine, mark), 5, "the adapter reloaded after the wake")
        models = http_json("GET", engine.url + "/v1/models")[1]["data"]
        assert [m["id"] for m in models] == ["m", "a"]
        text = metrics(patio)
        assert 'patio_engine_sleeping{model="m"} 0' in text
        assert 'patio_engine_sleep_transitions_total{model="m",action="wake",result="applied"} 1' in text
        assert "patio_topology_router_restarts_total 0" in text  # leaving on purpose is no router restart
    finally:
        patio.stop()


def test_a_sleep_refused_while_serving_leaves_the_pod_in_service(
    tmp_path: Path, engine: EngineProcess, router: RealRouter
) -> None:
    import threading

    patio = beside(tmp_path, engine, router, PATIO_RUNTIME_DRAIN_TIMEOUT="0.3")
    try:
        wait_for(lambda: routable(router, engine), 15, "registered")
        answers: List[Any] = []
        threads = [
            threading.Thread(
                target=lambda: answers.append(
                    http_json("POST", engine.url + "/v1/completions", {"model": "m", "max_tokens": 100}, timeout=30)
                )
            )
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        status, body = post(patio, "sleep", {"model_name": "m", "level": 1, "operation_id": "s"})
        assert status == 409 and body["type"] == "engine_busy" and "still serving" in body["message"]
        for thread in threads:
            thread.join(30)
        assert [s for s, _ in answers] == [200, 200, 200]
        wait_for(lambda: routable(router, engine), 10, "back in the router after the refused sleep")
        assert http_call("GET", patio.url + "/ready")[0] == 200
        assert http_json("GET", patio.url + "/v1/runtime/models")[1]["models"][0]["phase"] == "active"
    finally:
        patio.stop()


def test_an_engine_started_without_sleep_mode_answers_409_and_stays_routed(tmp_path: Path, router: RealRouter) -> None:
    engine = EngineProcess("vllm")  # dev mode, no --enable-sleep-mode
    patio = beside(tmp_path, engine, router)
    try:
        wait_for(lambda: routable(router, engine), 15, "registered")
        status, body = post(patio, "sleep", {"model_name": "m", "level": 1, "operation_id": "s"})
        assert status == 409 and body["type"] == "unsupported" and "--enable-sleep-mode" in body["message"]
        assert routable(router, engine) and http_call("GET", patio.url + "/ready")[0] == 200
        assert not any(e["target"].startswith("/sleep") for e in engine.requests())
    finally:
        patio.stop()
        engine.stop()


def test_a_patio_that_starts_beside_a_sleeping_engine_keeps_out(
    tmp_path: Path, engine: EngineProcess, router: RealRouter
) -> None:
    first = beside(tmp_path, engine, router)
    try:
        wait_for(lambda: routable(router, engine), 15, "registered")
        assert post(first, "sleep", {"model_name": "m", "level": 1, "operation_id": "s"})[0] == 200
    finally:
        first.stop()
    second = beside(tmp_path, engine, router)
    try:
        time.sleep(1.5)
        status, ready = http_json("GET", second.url + "/ready")
        assert (status, ready["param"]) == (503, "asleep")
        assert not routable(router, engine)
        assert post(second, "wake", {"model_name": "m", "operation_id": "w"})[1]["applied"] is True
        wait_for(lambda: routable(router, engine), 10, "registered after the wake")
    finally:
        second.stop()
