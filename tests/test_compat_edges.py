"""Issue 12 edges: the per-adapter engine key (load, reconcile reload after an engine restart,
unload, a Patio restart), bad input on the new fields, and an SGLang answer that is not SGLang's."""

import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

import pytest
from artifacts_fakes import FakeCdn, FakeHub, HubRepo
from compat_fakes import kubernetes_secret
from fakes.engine import FakeEngine
from support import RunningPatio, http_call, http_json, make_settings

from patio.lora.held_set import STATE_FILE

KEY = "sk-engine-only-key"
HF_TOKEN = "hf_token_for_edges"


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _patio(engine: FakeEngine, state: Path, interval: str = "0", **env: str) -> RunningPatio:
    full = {"INFERENCE_ENGINE": engine.kind, "INFERENCE_ENGINE_ENDPOINT": engine.url, "PATIO_STATE_DIR": str(state)}
    full.update(env)
    return RunningPatio(make_settings(["--lora-reconcile-interval", interval], full))


def test_engine_key_from_additional_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """additional_config["api-key"] is the engine's key for that adapter: load, reload, unload, restart."""
    caplog.set_level(logging.DEBUG)
    with FakeEngine("vllm", api_key=KEY) as engine:
        with _patio(engine, tmp_path, "0.2") as patio:
            body = {"lora_name": "a", "lora_path": "/models/a", "additional_config": {"api-key": KEY}}
            status, answer = http_json("POST", patio.url + "/v1/lora_adapter/load", body)
            assert status == 200, answer
            engine.restart()  # a real engine restart forgets runtime-loaded adapters
            wait_for(lambda: engine.adapters == {"a": "/models/a"})  # the reconcile reload
            loads = engine.calls_to("/v1/load_lora_adapter")
            assert len(loads) == 2 and all(c.headers.get("authorization") == f"Bearer {KEY}" for c in loads)
            # Once an adapter brought the key, the reconcile's listing uses it too (before: 401, nothing to heal).
            assert engine.calls_to("/v1/models", "GET")[-1].headers.get("authorization") == f"Bearer {KEY}"
            saved = tmp_path / STATE_FILE
            assert stat.S_IMODE(saved.stat().st_mode) == 0o600
            assert json.loads(saved.read_text())["adapters"][0]["engine_key"] == KEY
            # Nowhere else: not in the listing, the answers, the metrics.
            for path in ("/v1/lora_adapters", "/v1/lora_adapters/a", "/metrics"):
                assert KEY not in http_call("GET", patio.url + path)[2].decode()
            assert KEY not in json.dumps(answer)
        # A Patio restart: the key comes back from the state file for the next reload.
        engine.restart()
        with _patio(engine, tmp_path, "0.2") as patio:
            wait_for(lambda: engine.adapters == {"a": "/models/a"})
            status, answer = http_json(
                "POST", patio.url + "/v1/lora_adapter/unload", {"lora_name": "a", "cleanup_local": True}
            )
            assert status == 200, answer
        unload = engine.calls_to("/v1/unload_lora_adapter")[-1]
        assert unload.headers.get("authorization") == f"Bearer {KEY}" and engine.adapters == {}
        assert KEY not in (tmp_path / STATE_FILE).read_text()  # gone with the adapter
    assert KEY not in caplog.text


def test_configured_engine_key_wins(tmp_path: Path) -> None:
    with FakeEngine("vllm", api_key="configured") as engine:
        with _patio(engine, tmp_path, INFERENCE_ENGINE_API_KEY="configured") as patio:
            body = {"lora_name": "a", "lora_path": "/models/a", "additional_config": {"api-key": "other"}}
            assert http_json("POST", patio.url + "/v1/lora_adapter/load", body)[0] == 200
        assert engine.calls_to("/v1/load_lora_adapter")[-1].headers["authorization"] == "Bearer configured"


@pytest.mark.parametrize(
    "answer",
    [b"<html><body>OK</body></html>", b"", b'{"status": "ok"}', b'{"success": "yes"}', b"[" * 100_000],
    ids=["html_page", "empty", "other_json", "success_not_bool", "deeply_nested"],
)
def test_sglang_200_that_is_not_sglang_json_is_a_502(tmp_path: Path, answer: bytes) -> None:
    with FakeEngine("sglang") as engine, _patio(engine, tmp_path) as patio:
        engine.fail_next.append((200, answer))
        status, body = http_json("POST", patio.url + "/load_lora_adapter", {"lora_name": "a", "lora_path": "/m/a"})
        assert (status, body["type"], body["code"], body["object"]) == (502, "engine_bad_answer", 502, "error")
        # success=false with SGLang's JSON stays the engine refusing the caller's request.
        engine.fail_next.append((200, {"success": False, "error_message": "bad rank"}))
        status, body = http_json("POST", patio.url + "/load_lora_adapter", {"lora_name": "b", "lora_path": "/m/b"})
        assert status == 400 and "bad rank" in body["message"]


# --- bad input on the new fields -----------------------------------------------------------------


@pytest.fixture()
def setup(tmp_path: Path) -> Iterator[Dict[str, Any]]:
    cdn = FakeCdn()
    hub = FakeHub(cdn, page_size=100, token=HF_TOKEN)
    hub.add(HubRepo("acme/adapter", {"adapter_config.json": b"{}"}))
    dirs = {n: tmp_path / n for n in ("adapters", "models", "secrets", "outside", "state")}
    for path in dirs.values():
        path.mkdir()
    (dirs["outside"] / "token").write_text(HF_TOKEN)
    kubernetes_secret(dirs["secrets"], "good", {"huggingface_token": HF_TOKEN})
    os.symlink(dirs["outside"], dirs["secrets"] / "escape")  # the whole secret leaves the directory
    sneaky = dirs["secrets"] / "sneaky"
    sneaky.mkdir()
    os.symlink(dirs["outside"] / "token", sneaky / "huggingface_token")  # one key leaves it
    binary = dirs["secrets"] / "binary"
    binary.mkdir()
    (binary / "huggingface_token").write_bytes(b"\xff\xfe\x00token")
    big = dirs["secrets"] / "huge"
    big.mkdir()
    (big / "huggingface_token").write_bytes(b"x" * (1024 * 1024 + 1))
    env = {
        "PATIO_ADAPTER_DIR": str(dirs["adapters"]),
        "PATIO_MODELS_ROOT": str(dirs["models"]),
        "PATIO_CREDENTIALS_DIR": str(dirs["secrets"]),
        "HF_ENDPOINT": hub.url,
        "DOWNLOADER_MAX_RETRIES": "1",
    }
    try:
        with FakeEngine("vllm") as engine, _patio(engine, dirs["state"], **env) as patio:
            yield {"patio": patio, "engine": engine, **dirs}
    finally:
        hub.stop()
        cdn.stop()


HF = "hf://acme/adapter"
BAD_INPUT = [
    # (id, path, body, status, param, error type or None)
    (
        "secret_dotdot",
        "/v1/lora_adapter/load",
        {"artifact_url": HF, "credentials_secret": ".."},
        400,
        "credentials_secret",
        None,
    ),
    (
        "secret_dotdot_inside",
        "/v1/lora_adapter/load",
        {"artifact_url": HF, "credentials_secret": "a..b"},
        400,
        "credentials_secret",
        None,
    ),
    (
        "secret_slash",
        "/v1/lora_adapter/load",
        {"artifact_url": HF, "credentials_secret": "good/huggingface_token"},
        400,
        "credentials_secret",
        None,
    ),
    (
        "secret_symlink_out",
        "/v1/lora_adapter/load",
        {"artifact_url": HF, "credentials_secret": "escape"},
        400,
        "credentials_secret",
        None,
    ),
    (
        "secret_key_symlink_out",
        "/v1/lora_adapter/load",
        {"artifact_url": HF, "credentials_secret": "sneaky"},
        400,
        "credentials_secret",
        None,
    ),
    (
        "secret_missing",
        "/v1/lora_adapter/load",
        {"artifact_url": HF, "credentials_secret": "nope"},
        400,
        "credentials_secret",
        None,
    ),
    (
        "secret_not_text",
        "/v1/lora_adapter/load",
        {"artifact_url": HF, "credentials_secret": "binary"},
        500,
        "credentials_secret",
        "credentials_secret_unreadable",
    ),
    (
        "secret_too_large",
        "/v1/lora_adapter/load",
        {"artifact_url": HF, "credentials_secret": "huge"},
        500,
        "credentials_secret",
        "credentials_secret_unreadable",
    ),
    (
        "secret_not_string",
        "/v1/lora_adapter/load",
        {"artifact_url": HF, "credentials_secret": 7},
        400,
        "credentials_secret",
        None,
    ),
    ("config_number", "/v1/load_lora_adapter", {"source": HF, "config": 5}, 400, "config", None),
    ("config_string_not_json", "/v1/load_lora_adapter", {"source": HF, "config": "{hf_token: x"}, 400, "config", None),
    ("config_string_array", "/v1/load_lora_adapter", {"source": HF, "config": "[1, 2]"}, 400, "config", None),
    ("config_unknown_key", "/v1/load_lora_adapter", {"source": HF, "config": {"hf_tokn": "x"}}, 400, "config", None),
    (
        "output_dir_outside",
        "/v1/load_lora_adapter",
        {"source": HF, "output_dir": "{outside}/x"},
        400,
        "output_dir",
        None,
    ),
    (
        "output_dir_dotdot",
        "/v1/load_lora_adapter",
        {"source": HF, "output_dir": "{models}/../outside/x"},
        400,
        "output_dir",
        None,
    ),
    ("output_dir_is_root", "/v1/load_lora_adapter", {"source": HF, "output_dir": "{models}"}, 400, "output_dir", None),
    (
        "output_dir_for_local_path",
        "/v1/load_lora_adapter",
        {"lora_path": "/m/a", "output_dir": "{models}/a"},
        400,
        "output_dir",
        None,
    ),
    ("max_workers_zero", "/v1/load_lora_adapter", {"source": HF, "max_workers": 0}, 400, "max_workers", None),
    ("async_not_bool", "/v1/load_lora_adapter", {"source": HF, "async_download": "yes"}, 400, "async_download", None),
    ("two_sources", "/v1/lora_adapter/load", {"artifact_url": HF, "source": HF}, 400, "source", None),
    (
        "api_key_not_string",
        "/v1/lora_adapter/load",
        {"artifact_url": HF, "additional_config": {"api-key": 5}},
        400,
        "additional_config",
        None,
    ),
    (
        "local_dir_outside",
        "/v1/lora_adapter/load",
        {"artifact_url": HF, "local_dir": "{outside}"},
        400,
        "local_dir",
        None,
    ),
    (
        "download_model_outside",
        "/v1/download_model",
        {"source": HF, "output_dir": "{outside}/m"},
        400,
        "output_dir",
        None,
    ),
    (
        "download_model_config_bad",
        "/v1/download_model",
        {"source": HF, "output_dir": "{models}/m", "config": "nope"},
        400,
        "config",
        None,
    ),
]


@pytest.mark.parametrize("path,body,status,param,error_type", [r[1:] for r in BAD_INPUT], ids=[r[0] for r in BAD_INPUT])
def test_bad_input_is_refused_and_nothing_is_written(
    setup: Dict[str, Any], path: str, body: Dict[str, Any], status: int, param: str, error_type: Optional[str]
) -> None:
    payload = {
        k: (
            v.replace("{outside}", str(setup["outside"])).replace("{models}", str(setup["models"]))
            if isinstance(v, str)
            else v
        )
        for k, v in body.items()
    }
    if path != "/v1/download_model":
        payload["lora_name"] = "x"
    got, answer = http_json("POST", setup["patio"].url + path, payload)
    assert (got, answer["param"], answer["code"], answer["object"]) == (status, param, status, "error"), answer
    if error_type:
        assert answer["type"] == error_type
    assert HF_TOKEN not in json.dumps(answer)
    assert setup["engine"].calls_to("/v1/load_lora_adapter") == []
    assert os.listdir(setup["outside"]) == ["token"] and os.listdir(setup["models"]) == []
    assert [n for n in os.listdir(setup["adapters"])] == []


def test_one_table_drives_validation_and_the_openapi_schema(tmp_path: Path) -> None:
    """The fields a route accepts are the fields its schema shows; async answers are documented as 202."""
    from patio.artifacts.api import DOWNLOAD_BODY, KTHENA_BODY
    from patio.lora.api import LOAD_BODY, UNLOAD_BODY

    with FakeEngine("vllm") as engine:
        env = {"INFERENCE_ENGINE": "vllm", "INFERENCE_ENGINE_ENDPOINT": engine.url, "PATIO_STATE_DIR": str(tmp_path)}
        with RunningPatio(make_settings(["--enable-fastapi-docs"], env)) as patio:
            status, doc = http_json("GET", patio.url + "/openapi.json")
    assert status == 200
    paths = doc["paths"]

    def schema(path: str) -> Dict[str, Any]:
        return paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]

    vllm_fields = {f.name for f in LOAD_BODY.fields if not f.engines or "vllm" in f.engines}
    for path in ("/load_lora_adapter", "/v1/lora_adapter/load", "/v1/load_lora_adapter"):
        assert set(schema(path)["properties"]) == vllm_fields
        assert {"200", "202"} <= set(paths[path]["post"]["responses"])
    assert set(schema("/v1/lora_adapter/unload")["properties"]) == set(UNLOAD_BODY.names)
    assert set(schema("/v1/model/download")["properties"]) == set(DOWNLOAD_BODY.names)
    assert set(schema("/v1/download_model")["properties"]) == set(KTHENA_BODY.names)
    assert schema("/v1/download_model")["required"] == ["source", "output_dir"]
    # The download job API answers 202 and says so (it was documented as 200).
    assert "202" in paths["/v1/model/download"]["post"]["responses"]
    assert "200" not in paths["/v1/model/download"]["post"]["responses"]
    assert {"200", "202"} <= set(paths["/v1/download_model"]["post"]["responses"])
