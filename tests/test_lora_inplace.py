"""vLLM #33791: after a load with ``load_inplace: true`` vLLM reads the adapter from disk at every
step of every request on it (the flag stays on the request vLLM keeps; fixes #36373 and #41482 are
not merged).  Measured on the real vLLM in ``tests/e2e/test_vllm_lora_reports.py``.  So Patio never
sends the flag to an affected vLLM: an in-place reload is an unload and a load, all or nothing
(``patio/lora/inplace.py``).  Here the same behaviour over the real server and the fake vLLM.
"""

import time
from typing import Any, Dict, Optional, Tuple

import pytest
from fakes.engine import FakeEngine
from support import RunningPatio, http_json, make_settings

from patio.lora import inplace


def _patio(engine: FakeEngine, interval: str = "0", version: Optional[str] = None) -> RunningPatio:
    env = {"INFERENCE_ENGINE": engine.kind, "INFERENCE_ENGINE_ENDPOINT": engine.url}
    if version:
        env["INFERENCE_ENGINE_VERSION"] = version
    return RunningPatio(make_settings(["--lora-reconcile-interval", interval, "--lora-retry-attempts", "1"], env))


def _load(patio: RunningPatio, path: str, inplace_: bool = False) -> Tuple[int, Dict[str, Any]]:
    body: Dict[str, Any] = {"lora_name": "a", "lora_path": path}
    if inplace_:
        body["load_inplace"] = True
    return http_json("POST", patio.url + "/v1/load_lora_adapter", body)


def _view(patio: RunningPatio) -> Dict[str, Any]:
    return {a["name"]: a for a in http_json("GET", patio.url + "/v1/lora_adapters")[1]["data"]}["a"]


def _calls(engine: FakeEngine) -> list:
    """The engine's LoRA calls in order: ("load" | "unload", body)."""
    lora = (engine.load_path(), engine.unload_path())
    return [("load" if c.path == lora[0] else "unload", c.json()) for c in engine.calls if c.path in lora]


def test_vllm_33791_an_inplace_reload_is_unload_then_load() -> None:
    with FakeEngine("vllm") as engine, _patio(engine) as patio:
        assert _load(patio, "/m/a1")[0] == 200
        status, body = _load(patio, "/m/a2", inplace_=True)
        assert status == 200, body
        assert engine.adapters == {"a": "/m/a2"} and _view(patio)["path"] == "/m/a2"
        assert _calls(engine) == [
            ("load", {"lora_name": "a", "lora_path": "/m/a1"}),
            ("unload", {"lora_name": "a"}),
            ("load", {"lora_name": "a", "lora_path": "/m/a2"}),
        ]


def test_vllm_33791_a_first_load_never_carries_the_flag() -> None:
    with FakeEngine("vllm") as engine, _patio(engine) as patio:
        assert _load(patio, "/m/a1", inplace_=True)[0] == 200
        assert _calls(engine) == [("load", {"lora_name": "a", "lora_path": "/m/a1"})]


def test_vllm_33791_a_refused_reload_leaves_the_old_adapter_serving() -> None:
    with FakeEngine("vllm") as engine, _patio(engine) as patio:
        assert _load(patio, "/m/a1")[0] == 200
        engine.internal_error_paths.add("/m/a2")
        status, body = _load(patio, "/m/a2", inplace_=True)
        assert (status, body["type"]) == (502, "engine_error"), body
        assert engine.adapters == {"a": "/m/a1"}  # loaded again at once
        view = _view(patio)
        assert (view["state"], view["path"], view["engine_confirmed"]) == ("loaded", "/m/a1", True)
        assert "in-place reload from /m/a2 failed" in view["last_error"]
        assert [c[0] for c in _calls(engine)] == ["load", "unload", "load", "load"]


def test_vllm_33791_when_the_old_adapter_cannot_come_back_reconcile_brings_it() -> None:
    with FakeEngine("vllm") as engine, _patio(engine, interval="0.2") as patio:
        assert _load(patio, "/m/a1")[0] == 200
        engine.internal_error_paths.update({"/m/a1", "/m/a2"})
        status, body = _load(patio, "/m/a2", inplace_=True)
        assert status == 502 and "loading the previous adapter again failed too" in body["message"], body
        view = _view(patio)
        assert (view["state"], view["path"]) == ("loaded", "/m/a1")
        engine.internal_error_paths.clear()
        deadline = time.monotonic() + 10
        while engine.adapters != {"a": "/m/a1"} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.adapters == {"a": "/m/a1"}


def test_vllm_33791_a_refused_unload_changes_nothing() -> None:
    with FakeEngine("vllm") as engine, _patio(engine) as patio:
        assert _load(patio, "/m/a1")[0] == 200
        engine.fail_next.append((500, {"error": {"message": "busy", "type": "InternalServerError"}}))
        status, _ = _load(patio, "/m/a2", inplace_=True)
        assert status == 502 and engine.adapters == {"a": "/m/a1"}
        assert (_view(patio)["state"], _view(patio)["path"]) == ("loaded", "/m/a1")


def test_vllm_33791_a_fixed_vllm_gets_load_inplace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inplace, "VLLM_INPLACE_FIXED_IN", (0, 40))
    with FakeEngine("vllm") as engine, _patio(engine, version="0.40.1") as patio:
        assert _load(patio, "/m/a1")[0] == 200
        assert _load(patio, "/m/a2", inplace_=True)[0] == 200
        assert _calls(engine)[-1] == ("load", {"lora_name": "a", "lora_path": "/m/a2", "load_inplace": True})


VERSIONS = [
    ("sglang_never", "sglang", "0.5.3", None, False),
    ("vllm_no_fix_released", "vllm", "0.32.0", None, True),
    ("vllm_unknown_version", "vllm", "", (0, 40), True),
    ("vllm_before_the_fix", "vllm", "0.39.2", (0, 40), True),
    ("vllm_release_candidate_of_the_fix", "vllm", "0.40.0rc1", (0, 40), False),
    ("vllm_after_the_fix", "vllm", "v0.41.0", (0, 40), False),
]


@pytest.mark.parametrize("engine,version,fixed,swap", [c[1:] for c in VERSIONS], ids=[c[0] for c in VERSIONS])
def test_vllm_33791_which_versions_unload_then_load(
    monkeypatch: pytest.MonkeyPatch, engine: str, version: str, fixed: Optional[Tuple[int, ...]], swap: bool
) -> None:
    monkeypatch.setattr(inplace, "VLLM_INPLACE_FIXED_IN", fixed)
    assert inplace.unload_then_load(engine, version) is swap
