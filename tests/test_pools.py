"""Latency-critical work never waits behind long work (issue 13 rows 4, 5 and the /ready deadline).

Each case holds the slow side (LoRA loads in the engine, slow /v1/models answers, a
slow engine /health) for far longer than the client waits for the fast side, so a
Patio that shares one pool between them times out here instead of answering.
These are not timing assertions: the fast side either answers within a generous
client timeout while the slow side is provably still held, or it does not.
"""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List

import pytest
from fakes.engine import FakeEngine
from support import RunningPatio, http_call, http_json, make_settings

from patio.component import BoundedPool, Overloaded, PoolLimits

# How long the fast side may take while the slow side is held (the slow side holds 20+ s).
FAST_CLIENT_TIMEOUT = 5.0


def patio_for(engine: FakeEngine, tmp_path: Any, *args: str) -> RunningPatio:
    env = {"INFERENCE_ENGINE": engine.kind, "INFERENCE_ENGINE_ENDPOINT": engine.url, "PATIO_STATE_DIR": str(tmp_path)}
    return RunningPatio(make_settings(["--lora-reconcile-interval", "0", *args], env))


def fast_side_answers(patio: RunningPatio, paths: List[str]) -> None:
    for path in paths:
        status, _, _ = http_call("GET", patio.url + path, timeout=FAST_CLIENT_TIMEOUT)
        assert status == 200, path


def test_row4_probes_scrapes_and_models_answer_while_40_loads_sit_in_the_engine(tmp_path):
    gate = threading.Event()
    with FakeEngine("vllm") as engine, patio_for(engine, tmp_path) as patio:
        engine.lora_gate = gate
        with ThreadPoolExecutor(max_workers=40) as clients:
            loads = [
                clients.submit(
                    http_json,
                    "POST",
                    patio.url + "/load_lora_adapter",
                    {"lora_name": f"a{i}", "lora_path": f"/models/a{i}"},
                    None,
                    60.0,
                )
                for i in range(40)
            ]
            try:
                assert _wait(lambda: len(engine.calls_to(engine.load_path())) >= 16)
                fast_side_answers(patio, ["/ready", "/metrics", "/v1/models", "/healthz", "/v1/lora_adapters"])
                assert not any(f.done() for f in loads)  # the loads were held the whole time
            finally:
                gate.set()
            assert [f.result()[0] for f in loads] == [200] * 40


def test_row5_probes_answer_while_64_model_lists_wait_on_a_slow_engine(tmp_path):
    with FakeEngine("vllm") as engine, patio_for(engine, tmp_path) as patio:
        # /ready also asks the engine's model list (patio/lora/readiness.py): once it has seen it, a
        # slow list is answered from the last one known, within the deadline.
        assert http_call("GET", patio.url + "/ready")[0] == 200
        engine.models_delay = 20.0
        with ThreadPoolExecutor(max_workers=64) as clients:
            lists = [clients.submit(http_call, "GET", patio.url + "/v1/models", None, None, 60.0) for _ in range(64)]
            assert _wait(lambda: len(engine.calls_to("/v1/models", "GET")) >= 8)
            fast_side_answers(patio, ["/ready", "/metrics", "/healthz"])
            assert not any(f.done() for f in lists)
            engine.models_delay = 0.0
            for future in lists:
                future.cancel()


def test_ready_answers_within_its_deadline_when_the_engine_health_hangs(tmp_path):
    with FakeEngine("vllm") as engine:
        engine.health_delay = 8.0
        with patio_for(engine, tmp_path, "--ready-timeout", "0.5") as patio:
            status, body = http_json("GET", patio.url + "/ready", timeout=FAST_CLIENT_TIMEOUT)
            assert status == 503
            assert body["param"] == "engine" and "still running" in body["message"]
            engine.health_delay = 0.0


def test_ready_turns_503_when_shutdown_begins(tmp_path):
    with FakeEngine("vllm") as engine, patio_for(engine, tmp_path) as patio:
        assert http_call("GET", patio.url + "/ready")[0] == 200
        patio.app.closing = True
        status, body = http_json("GET", patio.url + "/ready")
        assert (status, body["param"]) == (503, "shutdown")


POOL_CASES = [
    ("within_threads_and_queue", 2, 2, 4, None),
    ("one_past_the_queue_is_refused", 2, 2, 5, Overloaded),
]


@pytest.mark.parametrize("name,threads,queued,calls,error", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_bounded_pool_refuses_work_past_its_queue(name, threads, queued, calls, error):
    pool = BoundedPool("test", PoolLimits(threads=threads, max_queued=queued))
    gate = threading.Event()

    async def scenario() -> List[Any]:
        tasks = [asyncio.ensure_future(pool.run(gate.wait, 5.0)) for _ in range(calls)]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = asyncio.run(scenario())
    finally:
        pool.shutdown()
    refused = [r for r in results if isinstance(r, Exception)]
    if error is None:
        assert refused == []
    else:
        assert len(refused) == 1 and isinstance(refused[0], error) and refused[0].status == 503
    assert pool.outstanding == 0


def _wait(predicate: Any, timeout: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
