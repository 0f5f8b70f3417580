"""Readiness that lies (GIE #558, llm-d #300 and #330, production-stack #619: the engine's /health
is 200 before it can serve): /ready also needs the served model in the engine's /v1/models and,
with an adapters file, the adapters it marks required loaded (patio/lora/readiness.py).  Over the
real server and the fake engines; the real vLLM during its start is tests/e2e/test_vllm_lora_reports.py.
"""

import json
import threading
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
from fakes.engine import BASE_MODEL, FakeEngine
from support import RunningPatio, http_call, http_json, make_settings

from patio.lora.desired import AdaptersFileError, load_desired


def _patio(engine: FakeEngine, tmp: Path, *args: str, adapters_file: Any = None) -> RunningPatio:
    env = {
        "INFERENCE_ENGINE": engine.kind,
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "PATIO_STATE_DIR": str(tmp / "state"),
    }
    if adapters_file is not None:
        env["PATIO_ADAPTERS_FILE"] = str(adapters_file)
    flags = ["--lora-reconcile-interval", "0", "--adapters-file-interval", "0.05", "--adapter-apply-backoff", "0.02"]
    return RunningPatio(make_settings([*flags, *args], env))


def _ready(patio: RunningPatio) -> Tuple[int, Dict[str, Any]]:
    status, body = http_json("GET", patio.url + "/ready")
    return status, {c["name"]: c for c in body["checks"]} if "checks" in body else body


def _eventually(probe: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_gie_558_ready_names_the_model_the_engine_serves(tmp_path: Path, kind: str) -> None:
    with FakeEngine(kind) as engine, _patio(engine, tmp_path) as patio:
        status, checks = _ready(patio)
        assert status == 200
        assert checks["model"] == {"name": "model", "ok": True, "detail": f"the engine serves {BASE_MODEL}"}


def test_llm_d_300_health_200_without_a_model_is_not_ready(tmp_path: Path) -> None:
    with FakeEngine("vllm") as engine, _patio(engine, tmp_path, "--ready-cache-ttl", "0") as patio:
        engine.models_body = b'{"object": "list", "data": []}'  # up, answering, serving nothing yet
        status, body = http_json("GET", patio.url + "/ready")
        assert (status, body["param"]) == (503, "model"), body
        assert "lists no base model yet" in body["message"]
        engine.models_body = None
        assert _ready(patio)[0] == 200


@pytest.mark.parametrize("body", [b"<html>starting</html>", b'{"data": 5}'], ids=["not_json", "not_a_model_list"])
def test_llm_d_330_a_model_list_that_is_not_one_is_not_ready(tmp_path: Path, body: bytes) -> None:
    with FakeEngine("vllm") as engine, _patio(engine, tmp_path, "--ready-cache-ttl", "0") as patio:
        engine.models_body = body
        status, answer = http_json("GET", patio.url + "/ready")
        assert (status, answer["param"]) == (503, "model"), answer


def test_production_stack_619_a_down_engine_is_one_line(tmp_path: Path) -> None:
    with FakeEngine("vllm") as engine, _patio(engine, tmp_path, "--ready-cache-ttl", "0") as patio:
        assert _ready(patio)[0] == 200
        engine.health_status = 503
        status, body = http_json("GET", patio.url + "/ready")
        assert status == 503 and [c["name"] for c in body["checks"]] == ["engine"]


def test_a_key_patio_lacks_does_not_hold_the_pod_back(tmp_path: Path) -> None:
    # AIBrix's controller sends the engine key with each load; before the first, Patio has none.
    with FakeEngine("vllm", api_key="sk-engine") as engine, _patio(engine, tmp_path) as patio:
        status, checks = _ready(patio)
        assert status == 200 and checks["model"]["ok"] is True
        assert checks["model"]["detail"].startswith("not verified: engine /v1/models answered 401")


def test_model_lists_are_shared_by_a_probe_storm(tmp_path: Path) -> None:
    with FakeEngine("vllm") as engine, _patio(engine, tmp_path, "--ready-cache-ttl", "30") as patio:
        assert _ready(patio)[0] == 200  # the list is known (this probe's, or reconciliation's at start)
        before = len(engine.calls_to("/v1/models", "GET"))
        threads = [threading.Thread(target=http_call, args=("GET", patio.url + "/ready")) for _ in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # 30 probes, not 30 lists: at most reconciliation's first listing and a probe the first
        # /ready left running may land meanwhile on a loaded machine.
        assert len(engine.calls_to("/v1/models", "GET")) - before <= 2


def test_a_model_list_that_never_comes_is_answered_within_the_deadline(tmp_path: Path) -> None:
    with FakeEngine("vllm") as engine:
        engine.models_delay = 8.0
        with _patio(engine, tmp_path, "--ready-timeout", "0.5") as patio:
            started = time.monotonic()
            status, body = http_json("GET", patio.url + "/ready", timeout=5.0)
            assert time.monotonic() - started < 5.0  # the client's patience, not a timing assertion
            assert (status, body["param"]) == (503, "model"), body
            assert "did not come within" in body["message"]
            engine.models_delay = 0.0


def _file(path: Path, adapters: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"adapters": adapters}))
    tmp.replace(path)


def test_gie_558_required_adapters_hold_readiness_until_loaded(tmp_path: Path) -> None:
    adapters = tmp_path / "adapters.json"
    _file(
        adapters,
        [
            {"name": "sql", "source": "/m/sql", "required": True},
            {"name": "chat", "source": "/m/missing"},  # not required: its failure does not hold the pod
        ],
    )
    with FakeEngine("vllm") as engine:
        engine.valid_paths = {"/m/other"}
        flags = ("--ready-cache-ttl", "0", "--adapter-failed-retry-interval", "0.2")
        with _patio(engine, tmp_path, *flags, adapters_file=adapters) as patio:
            status, body = http_json("GET", patio.url + "/ready")
            assert (status, body["param"]) == (503, "adapters"), body
            assert "required adapters not loaded yet: sql" in body["message"]
            engine.valid_paths = None  # the adapter appears on the volume; the retry loads it
            assert _eventually(lambda: _ready(patio)[0] == 200, 15.0)
            assert _ready(patio)[1]["adapters"]["detail"] == "1 required adapter(s) loaded"
            engine.adapters.clear()  # the engine lost it (a restart): not ready until it is back
            status, body = http_json("GET", patio.url + "/ready")
            assert (status, body["param"]) == (503, "adapters"), body


def test_without_required_adapters_the_file_does_not_hold_readiness(tmp_path: Path) -> None:
    adapters = tmp_path / "adapters.json"
    _file(adapters, [{"name": "broken", "source": "/m/missing"}])
    with FakeEngine("vllm") as engine:
        engine.valid_paths = set()
        with _patio(engine, tmp_path, adapters_file=adapters) as patio:
            assert _eventually(lambda: _ready(patio)[0] == 200)
            assert "adapters" not in _ready(patio)[1]


FILES = [
    (
        "syncer_shape",
        b"vLLMLoRAConfig:\n  ensureExist:\n    models:\n    - id: a\n      source: /m/a\n      required: true\n",
    ),
    ("patio_shape", b'{"adapters": [{"name": "a", "source": "/m/a", "required": true}]}'),
]


@pytest.mark.parametrize("raw", [c[1] for c in FILES], ids=[c[0] for c in FILES])
def test_the_file_marks_adapters_required(raw: bytes) -> None:
    state = load_desired(raw, "/f", 10)
    assert [(a.name, a.required) for a in state.adapters] == [("a", True)]


BAD_FILES = [
    ("not_a_flag", b'{"adapters": [{"name": "a", "source": "/m/a", "required": "yes"}]}', "must be true or false"),
    (
        "required_to_remove",
        b"vLLMLoRAConfig:\n  ensureNotExist:\n    models:\n    - id: a\n      required: true\n",
        "applies to adapters to be present",
    ),
]


@pytest.mark.parametrize("raw,message", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_a_wrong_required_is_an_error(raw: bytes, message: str) -> None:
    with pytest.raises(AdaptersFileError) as caught:
        load_desired(raw, "/f", 10)
    assert message in caught.value.message
