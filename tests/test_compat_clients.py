"""Issue 12: the real AIBrix and Kthena clients, replayed byte for byte against a running Patio.

One conformance table per client; each row names the client source file it replays
(read from the client's repository), sends the request exactly as that client
writes it, and asserts what that client needs from the answer:

- AIBrix controller, runtime-sidecar mode: vllm-project/aibrix
  ``pkg/controller/modeladapter/lora_client.go`` (Go ``net/http``; ``json.Marshal`` of a
  map, so keys sorted and no spaces; success is 200 or 201; ``data[].id`` read from
  ``GET /v1/models``; ``Authorization: Bearer <additional_config["api-key"]>`` on every call);
- AIBrix runtime contract: vllm-project/aibrix ``python/aibrix/aibrix/runtime/artifact_service.py``
  (secret directory layout, credentials precedence, the success answer's fields);
- Kthena runtime: volcano-sh/kthena ``python/kthena/runtime/app.py`` (httpx ``json=``);
- Kthena downloader: volcano-sh/kthena ``python/kthena/downloader/app.py`` (its CLI flags).

Stores are local fakes that follow their clients' contracts (the HF fake is the one
``huggingface_hub`` is tested against; the ModelScope fake is checked against the
``modelscope_hub`` client in test_compat_modelscope.py); the engine is the fake vLLM.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from artifacts_fakes import FakeCdn, FakeHub, HubRepo
from compat_fakes import FakeModelScope, go_request, httpx_request, kubernetes_secret, replay, tree
from fakes.engine import BASE_MODEL, FakeEngine
from support import PEERS_ALLOWED, ROOT, RunningPatio, http_json, make_settings

pytestmark = pytest.mark.slow

HF_TOKEN = "hf_secret_token_only_in_the_mounted_secret"
MS_TOKEN = "ms_secret_token"
ENGINE_KEY = "engine-key-from-additional-config"
ADAPTER: Dict[str, bytes] = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": os.urandom(120_000)}
MS_ADAPTER: Dict[str, bytes] = {"adapter_config.json": b'{"r": 4}', "weights/adapter.bin": os.urandom(90_000)}


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[Dict[str, Any]]:
    cdn = FakeCdn()
    hub = FakeHub(cdn, page_size=100, token=HF_TOKEN)  # only the secret's token opens it
    hub.add(HubRepo("acme/adapter", ADAPTER, ("adapter_model.safetensors",)))
    ms = FakeModelScope(cdn, token=MS_TOKEN)
    ms.add("acme/ms-lora", MS_ADAPTER, cdn=("weights/adapter.bin",))
    engine = FakeEngine("vllm", api_key=ENGINE_KEY)
    dirs = {name: tmp_path / name for name in ("adapters", "models", "secrets", "state", "pvc")}
    for path in dirs.values():
        path.mkdir()
    for rel, data in ADAPTER.items():
        (dirs["pvc"] / "loras" / "a").mkdir(parents=True, exist_ok=True)
        (dirs["pvc"] / "loras" / "a" / rel).write_bytes(data)
    kubernetes_secret(dirs["secrets"], "hf-creds", {"huggingface_token": HF_TOKEN})
    kubernetes_secret(dirs["secrets"], "wrong-creds", {"huggingface_token": "not-the-token"})
    (dirs["secrets"] / "plain-file").write_text("a single value\n")
    env = {
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "PATIO_STATE_DIR": str(dirs["state"]),
        "PATIO_ADAPTER_DIR": str(dirs["adapters"]),
        "PATIO_MODELS_ROOT": str(dirs["models"]),
        "PATIO_CREDENTIALS_DIR": str(dirs["secrets"]),
        "PATIO_PVC_ROOT": str(dirs["pvc"]),
        "HF_ENDPOINT": hub.url,
        "MODELSCOPE_ENDPOINT": ms.url,
        "MS_TOKEN": MS_TOKEN,  # Kthena's environment fall-back for config.ms_token
        "DOWNLOADER_MAX_RETRIES": "1",
        "DOWNLOADER_BACKOFF_BASE": "0.01",
    }
    try:
        with RunningPatio(make_settings(["--lora-reconcile-interval", "0"], env)) as patio:
            yield {"patio": patio, "engine": engine, "hub": hub, "ms": ms, "env": env, **dirs}
    finally:
        engine.stop()
        hub.stop()
        ms.stop()
        cdn.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def adapter_view(w: Dict[str, Any], name: str) -> Optional[Dict[str, Any]]:
    status, body = http_json("GET", f"{w['patio'].url}/v1/lora_adapters/{name}")
    return body if status == 200 else None


# --- AIBrix controller: pkg/controller/modeladapter/lora_client.go ----------------------------------


def _aibrix_load(w: Dict[str, Any], name: str, **fields: Any) -> Tuple[int, Dict[str, Any]]:
    payload: Dict[str, Any] = {"lora_name": name, "artifact_url": "huggingface://acme/adapter"}
    payload.update(fields)
    key = (payload.get("additional_config") or {}).get("api-key")
    status, _, body = replay(
        w["patio"].port, go_request(w["patio"].port, "POST", "/v1/lora_adapter/load", payload, key)
    )
    return status, json.loads(body)


def row_models_list(w: Dict[str, Any]) -> None:
    # getModels: GET /v1/models with the engine's key; a non-200 fails the reconcile; reads data[].id.
    status, _, body = replay(w["patio"].port, go_request(w["patio"].port, "GET", "/v1/models", None, ENGINE_KEY))
    assert status == 200
    assert BASE_MODEL in [card["id"] for card in json.loads(body)["data"]]


def row_delegated_load_with_secret(w: Dict[str, Any]) -> None:
    # loadAdapterCall (useSidecar): {"additional_config","artifact_url","credentials_secret","lora_name"}.
    status, body = _aibrix_load(w, "acc", credentials_secret="hf-creds", additional_config={"api-key": ENGINE_KEY})
    assert status in (200, 201), body  # the controller accepts exactly these
    local = w["adapters"] / "acc"
    assert tree(local) == ADAPTER
    assert w["engine"].adapters == {"acc": str(local)}
    load = w["engine"].calls_to("/v1/load_lora_adapter")[-1]
    assert load.headers["authorization"] == f"Bearer {ENGINE_KEY}"  # the engine demanded it
    # The controller then sees the adapter through the sidecar's /v1/models.
    status, _, raw = replay(w["patio"].port, go_request(w["patio"].port, "GET", "/v1/models", None, ENGINE_KEY))
    assert status == 200 and "acc" in [c["id"] for c in json.loads(raw)["data"]]


def row_unload_cleans_up(w: Dict[str, Any]) -> None:
    status, body = _aibrix_load(w, "gone", credentials_secret="hf-creds", additional_config={"api-key": ENGINE_KEY})
    assert status in (200, 201), body
    raw = go_request(
        w["patio"].port, "POST", "/v1/lora_adapter/unload", {"lora_name": "gone", "cleanup_local": True}, ENGINE_KEY
    )
    status, _, answer = replay(w["patio"].port, raw)
    assert status in (200, 201), answer
    assert w["engine"].adapters == {} and not (w["adapters"] / "gone").exists()
    unload = w["engine"].calls_to("/v1/unload_lora_adapter")[-1]
    assert unload.headers["authorization"] == f"Bearer {ENGINE_KEY}"


def row_failure_is_not_2xx(w: Dict[str, Any]) -> None:
    # The controller treats anything but 200/201 as a failure: a wrong secret must not look like success.
    status, body = _aibrix_load(
        w, "denied", credentials_secret="wrong-creds", additional_config={"api-key": ENGINE_KEY}
    )
    assert status not in (200, 201) and body["object"] == "error"
    assert w["engine"].adapters == {}


AIBRIX_CONTROLLER_ROWS = [
    ("models_list", row_models_list),
    ("delegated_load_with_secret", row_delegated_load_with_secret),
    ("unload_cleans_up", row_unload_cleans_up),
    ("failure_is_not_2xx", row_failure_is_not_2xx),
]


@pytest.mark.parametrize("row", [r[1] for r in AIBRIX_CONTROLLER_ROWS], ids=[r[0] for r in AIBRIX_CONTROLLER_ROWS])
def test_aibrix_controller(world: Dict[str, Any], row: Callable[[Dict[str, Any]], None]) -> None:
    """Replays vllm-project/aibrix pkg/controller/modeladapter/lora_client.go (runtime-sidecar mode)."""
    row(world)


# --- AIBrix runtime contract: python/aibrix/aibrix/runtime/artifact_service.py -------------------------


def row_request_credentials_win_over_the_secret(w: Dict[str, Any]) -> None:
    status, body = _aibrix_load(
        w,
        "cwins",
        credentials_secret="wrong-creds",
        credentials={"huggingface_token": HF_TOKEN},
        additional_config={"api-key": ENGINE_KEY},
    )
    assert status == 200, body


def row_additional_config_merges_on_top(w: Dict[str, Any]) -> None:
    status, body = _aibrix_load(
        w,
        "acwins",
        credentials_secret="wrong-creds",
        additional_config={"api-key": ENGINE_KEY, "huggingface_token": HF_TOKEN},
    )
    assert status == 200, body


def row_plain_file_secret_is_default(w: Dict[str, Any]) -> None:
    # A plain file is read as the key "default"; it names no store key, so the token comes from credentials.
    status, body = _aibrix_load(
        w,
        "plain",
        credentials_secret="plain-file",
        credentials={"huggingface_token": HF_TOKEN},
        additional_config={"api-key": ENGINE_KEY},
    )
    assert status == 200, body


def row_success_answer_fields(w: Dict[str, Any]) -> None:
    # LoadLoraAdapterRuntimeResponse: status, message, local_path, engine_response.
    status, body = _aibrix_load(w, "fields", credentials_secret="hf-creds", additional_config={"api-key": ENGINE_KEY})
    assert status == 200
    assert body["status"] == "success" and body["message"]
    assert body["local_path"] == str(w["adapters"] / "fields") == body["lora_path"]
    assert isinstance(body["engine_response"], dict)
    assert HF_TOKEN not in json.dumps(body) and ENGINE_KEY not in json.dumps(body)


def row_local_dir_inside_the_adapter_dir(w: Dict[str, Any]) -> None:
    inner = w["adapters"] / "team-a"
    status, body = _aibrix_load(
        w, "ld", credentials_secret="hf-creds", local_dir=str(inner), additional_config={"api-key": ENGINE_KEY}
    )
    assert status == 200, body
    assert body["local_path"] == str(inner / "ld") and tree(inner / "ld") == ADAPTER


def row_local_dir_outside_is_refused(w: Dict[str, Any]) -> None:
    outside = w["models"].parent / "elsewhere"
    status, body = _aibrix_load(
        w, "out", credentials_secret="hf-creds", local_dir=str(outside), additional_config={"api-key": ENGINE_KEY}
    )
    assert (status, body["param"]) == (400, "local_dir")
    assert not outside.exists() and w["engine"].adapters == {}


AIBRIX_RUNTIME_ROWS = [
    ("request_credentials_win_over_the_secret", row_request_credentials_win_over_the_secret),
    ("additional_config_merges_on_top", row_additional_config_merges_on_top),
    ("plain_file_secret_is_default", row_plain_file_secret_is_default),
    ("success_answer_fields", row_success_answer_fields),
    ("local_dir_inside_the_adapter_dir", row_local_dir_inside_the_adapter_dir),
    ("local_dir_outside_is_refused", row_local_dir_outside_is_refused),
]


@pytest.mark.parametrize("row", [r[1] for r in AIBRIX_RUNTIME_ROWS], ids=[r[0] for r in AIBRIX_RUNTIME_ROWS])
def test_aibrix_runtime_contract(world: Dict[str, Any], row: Callable[[Dict[str, Any]], None]) -> None:
    """Replays vllm-project/aibrix python/aibrix/aibrix/runtime/artifact_service.py (and its downloaders.py keys)."""
    row(world)


# --- Kthena runtime: python/kthena/runtime/app.py ------------------------------------------------------


def _kthena(w: Dict[str, Any], path: str, payload: Dict[str, Any]) -> Tuple[int, Dict[str, str], Dict[str, Any]]:
    # Kthena's runtime forwards no key to the engine; this Patio has none configured, so give it one.
    status, headers, body = replay(w["patio"].port, httpx_request(w["patio"].port, path, payload))
    return status, headers, json.loads(body)


def _engine_open(w: Dict[str, Any]) -> None:
    w["engine"].api_key = None  # Kthena's runtime never sends an engine key


def row_kthena_sync_load_config_string(w: Dict[str, Any]) -> None:
    _engine_open(w)
    out = w["models"] / "loras" / "k1"
    config = json.dumps({"hf_token": HF_TOKEN})  # Kthena json.loads config: its own clients send a string
    status, _, body = _kthena(
        w,
        "/v1/load_lora_adapter",
        {"lora_name": "k1", "source": "acme/adapter", "output_dir": str(out), "config": config},
    )
    assert status == 200, body  # sync: the engine's answer, after download and load
    assert tree(out) == ADAPTER and w["engine"].adapters == {"k1": str(out)}


def curl_request(port: int, path: str, body: str) -> bytes:
    """What ``curl -X POST URL -H "Content-Type: application/json" -d '...'`` writes."""
    data = body.encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def row_kthena_documented_curl_example(w: Dict[str, Any]) -> None:
    # Kthena's runtime docs ("Model Configuration APIs (LoRA)"), the synchronous HF example, verbatim
    # but for the repo, the directory and the token value.
    _engine_open(w)
    out = w["models"] / "lora" / "qwen"
    body = (
        "{\n"
        '    "lora_name": "qwen-lora",\n'
        '    "source": "acme/adapter",\n'
        f'    "output_dir": "{out}",\n'
        f'    "config": "{{\\"hf_token\\":\\"{HF_TOKEN}\\",\\"hf_revision\\":\\"main\\"}}",\n'
        '    "max_workers": 8,\n'
        '    "async_download": false\n'
        "  }"
    )
    status, _, raw = replay(w["patio"].port, curl_request(w["patio"].port, "/v1/load_lora_adapter", body))
    assert status == 200, raw
    assert tree(out) == ADAPTER and w["engine"].adapters == {"qwen-lora": str(out)}
    status, _, raw = replay(
        w["patio"].port,
        curl_request(w["patio"].port, "/v1/unload_lora_adapter", '{\n    "lora_name": "qwen-lora"\n  }'),
    )
    assert status == 200, raw


def row_kthena_sync_load_config_object(w: Dict[str, Any]) -> None:
    _engine_open(w)
    out = w["adapters"] / "k2"
    payload = {
        "lora_name": "k2",
        "source": "hf://acme/adapter",
        "output_dir": str(out),
        "config": {"hf_token": HF_TOKEN},
        "max_workers": 2,
    }
    status, _, body = _kthena(w, "/v1/load_lora_adapter", payload)
    assert status == 200, body
    assert w["engine"].adapters == {"k2": str(out)}
    assert (adapter_view(w, "k2") or {})["download"]["threads"] == 2


def row_kthena_modelscope_source(w: Dict[str, Any]) -> None:
    _engine_open(w)
    out = w["models"] / "ms-lora"
    # No ms_token in config: Kthena's fall-back is the MS_TOKEN environment variable.
    status, _, body = _kthena(
        w, "/v1/load_lora_adapter", {"lora_name": "msl", "source": "ms://acme/ms-lora", "output_dir": str(out)}
    )
    assert status == 200, body
    assert tree(out) == MS_ADAPTER and w["engine"].adapters == {"msl": str(out)}


def row_kthena_pvc_source_is_copied(w: Dict[str, Any]) -> None:
    _engine_open(w)
    out = w["models"] / "from-pvc"
    status, _, body = _kthena(
        w, "/v1/load_lora_adapter", {"lora_name": "pv", "source": "pvc://loras/a", "output_dir": str(out)}
    )
    assert status == 200, body
    assert tree(out) == ADAPTER and w["engine"].adapters == {"pv": str(out)}


def row_kthena_async_load_is_followed(w: Dict[str, Any]) -> None:
    _engine_open(w)
    out = w["models"] / "k3"
    payload = {
        "lora_name": "k3",
        "source": "acme/adapter",
        "output_dir": str(out),
        "config": {"hf_token": HF_TOKEN},
        "async_download": True,
    }
    status, headers, body = _kthena(w, "/v1/load_lora_adapter", payload)
    assert status == 202
    assert (body["status"], body["lora_name"], body["output_dir"]) == ("started", "k3", str(out))
    assert body["source"] == "hf://acme/adapter" and body["message"]
    assert headers["location"] == "/v1/lora_adapters/k3"
    view = wait_for(lambda: (adapter_view(w, "k3") or {}).get("state") == "loaded" and adapter_view(w, "k3"))
    assert view["path"] == str(out) and w["engine"].adapters == {"k3": str(out)}
    assert view["download"]["threads"] == 8  # Kthena's default max_workers, not --download-threads (16)


def row_kthena_async_failure_stays_visible(w: Dict[str, Any]) -> None:
    _engine_open(w)
    payload = {
        "lora_name": "k4",
        "source": "acme/missing",
        "output_dir": str(w["models"] / "k4"),
        "config": {"hf_token": HF_TOKEN},
        "async_download": True,
    }
    status, _, _ = _kthena(w, "/v1/load_lora_adapter", payload)
    assert status == 202
    view = wait_for(lambda: (adapter_view(w, "k4") or {}).get("state") == "failed" and adapter_view(w, "k4"))
    assert "not found" in view["last_error"]
    listed = {a["name"]: a for a in http_json("GET", w["patio"].url + "/v1/lora_adapters")[1]["data"]}
    assert listed["k4"]["state"] == "failed" and w["engine"].adapters == {}


def row_kthena_unload(w: Dict[str, Any]) -> None:
    _engine_open(w)
    out = w["models"] / "k5"
    _kthena(
        w,
        "/v1/load_lora_adapter",
        {"lora_name": "k5", "source": "acme/adapter", "output_dir": str(out), "config": {"hf_token": HF_TOKEN}},
    )
    status, _, body = _kthena(w, "/v1/unload_lora_adapter", {"lora_name": "k5"})
    assert status == 200, body
    assert w["engine"].adapters == {}
    assert tree(out) == ADAPTER  # Kthena never deletes the caller's output_dir
    # Unless asked: cleanup_local deletes a directory Patio downloaded into (its marker says so).
    _kthena(w, "/v1/load_lora_adapter", {"lora_name": "k5", "source": "acme/adapter", "output_dir": str(out)})
    status, _, body = _kthena(w, "/v1/unload_lora_adapter", {"lora_name": "k5", "cleanup_local": True})
    assert status == 200, body
    assert not out.exists() and (w["models"]).exists()


def row_kthena_callers_directory_is_never_deleted(w: Dict[str, Any]) -> None:
    _engine_open(w)
    out = w["models"] / "shared"
    out.mkdir()
    (out / "README.md").write_text("the caller's own file")
    payload = {"lora_name": "k6", "source": "acme/adapter", "output_dir": str(out), "config": {"hf_token": HF_TOKEN}}
    assert _kthena(w, "/v1/load_lora_adapter", payload)[0] == 200
    status, _, body = _kthena(w, "/v1/unload_lora_adapter", {"lora_name": "k6", "cleanup_local": True})
    assert status == 200, body
    # Patio did not create that directory, so even cleanup_local leaves it (and the caller's file) alone.
    assert (out / "README.md").read_text() == "the caller's own file"


def row_kthena_download_model_sync(w: Dict[str, Any]) -> None:
    out = w["models"] / "base"
    payload = {
        "source": "acme/adapter",
        "output_dir": str(out),
        "config": json.dumps({"hf_token": HF_TOKEN}),
        "max_workers": 4,
    }
    status, _, body = _kthena(w, "/v1/download_model", payload)
    assert status == 200, body
    assert (body["status"], body["output_dir"]) == ("completed", str(out))
    assert tree(out) == ADAPTER and body["job"]["threads"] == 4


def row_kthena_download_model_async(w: Dict[str, Any]) -> None:
    out = w["models"] / "base-async"
    payload = {"source": "ms://acme/ms-lora", "output_dir": str(out), "async_download": True}
    status, headers, body = _kthena(w, "/v1/download_model", payload)
    assert status == 202 and body["status"] == "started" and body["output_dir"] == str(out)
    job = wait_for(
        lambda: (lambda j: j if j["status"] not in ("queued", "running") else None)(
            http_json("GET", w["patio"].url + headers["location"])[1]
        )
    )
    assert job["status"] == "completed" and tree(out) == MS_ADAPTER
    assert job["threads"] == 8  # Kthena's default max_workers


@pytest.mark.parametrize("missing", ["source", "output_dir"])
def test_kthena_download_model_requires_source_and_output_dir(world: Dict[str, Any], missing: str) -> None:
    """volcano-sh/kthena python/kthena/runtime/app.py: 400 when source or output_dir is missing."""
    payload = {"source": "acme/adapter", "output_dir": str(world["models"] / "x")}
    del payload[missing]
    status, _, body = _kthena(world, "/v1/download_model", payload)
    assert (status, body["param"], body["object"]) == (400, missing, "error")


KTHENA_RUNTIME_ROWS = [
    ("sync_load_config_string", row_kthena_sync_load_config_string),
    ("sync_load_config_object", row_kthena_sync_load_config_object),
    ("documented_curl_example", row_kthena_documented_curl_example),
    ("modelscope_source", row_kthena_modelscope_source),
    ("pvc_source_is_copied", row_kthena_pvc_source_is_copied),
    ("async_load_is_followed", row_kthena_async_load_is_followed),
    ("async_failure_stays_visible", row_kthena_async_failure_stays_visible),
    ("unload", row_kthena_unload),
    ("callers_directory_is_never_deleted", row_kthena_callers_directory_is_never_deleted),
    ("download_model_sync", row_kthena_download_model_sync),
    ("download_model_async", row_kthena_download_model_async),
]


@pytest.mark.parametrize("row", [r[1] for r in KTHENA_RUNTIME_ROWS], ids=[r[0] for r in KTHENA_RUNTIME_ROWS])
def test_kthena_runtime(world: Dict[str, Any], row: Callable[[Dict[str, Any]], None]) -> None:
    """Replays volcano-sh/kthena python/kthena/runtime/app.py."""
    row(world)


# --- Kthena downloader: python/kthena/downloader/app.py (init containers) ------------------------------

KTHENA_DOWNLOADER_ROWS = [
    # (id, argv after `patio download`, extra env, expected files)
    (
        "short_flags_modelscope",
        ["-s", "ms://acme/ms-lora", "-o", "{out}", "-w", "2", "-c", '{"ms_token": "' + MS_TOKEN + '"}'],
        {},
        MS_ADAPTER,
    ),
    (
        "long_flags_hf_env_token",
        ["--source", "acme/adapter", "--output-dir", "{out}", "--max-workers", "3"],
        {"HF_AUTH_TOKEN": HF_TOKEN},
        ADAPTER,
    ),
    (
        "config_hf_revision",
        ["-s", "hf://acme/adapter", "-o", "{out}", "-c", '{"hf_token": "' + HF_TOKEN + '", "hf_revision": "main"}'],
        {},
        ADAPTER,
    ),
]


@pytest.mark.parametrize(
    "argv,extra,expected", [r[1:] for r in KTHENA_DOWNLOADER_ROWS], ids=[r[0] for r in KTHENA_DOWNLOADER_ROWS]
)
def test_kthena_downloader_flags(
    world: Dict[str, Any], tmp_path: Path, argv: List[str], extra: Dict[str, str], expected: Dict[str, bytes]
) -> None:
    """Replays volcano-sh/kthena python/kthena/downloader/app.py's flags, as its init containers pass them."""
    out = tmp_path / "dl"
    env = {"PATH": os.environ.get("PATH", ""), "HF_ENDPOINT": world["hub"].url, "MODELSCOPE_ENDPOINT": world["ms"].url}
    env.update(PEERS_ALLOWED)
    env.update(extra)
    args = [a.replace("{out}", str(out)) for a in argv]
    done = subprocess.run(
        [sys.executable, str(ROOT / "patio.py"), "download", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert tree(out) == expected
    assert HF_TOKEN not in done.stderr and MS_TOKEN not in done.stderr


def test_gcs_scheme_alias_and_aibrix_key_names() -> None:
    """AIBrix's downloaders.py: gcs:// and its credential key names for every store."""
    from patio.artifacts.auth.credentials import merge_credentials
    from patio.artifacts.uri import parse_uri

    assert parse_uri("gcs://bucket/adapters/a").kind == "gs"
    secret = {
        "aws_access_key_id": "AKIA1",
        "aws_secret_access_key": "s3cr3t",
        "aws_region": "eu-west-1",
        "aws_session_token": "tok",
        "gcp_service_account_json": '{"type": "service_account"}',
        "huggingface_token": "hf",
        "endpoint": "http://minio:9000",
        "unrelated": "skipped",
    }
    creds = merge_credentials([("credentials_secret", secret, False)])
    assert (creds.access_key_id, creds.secret_access_key, creds.region, creds.session_token) == (
        "AKIA1",
        "s3cr3t",
        "eu-west-1",
        "tok",
    )
    assert creds.service_account_json and creds.token == "hf" and creds.endpoint == "http://minio:9000"
    tos = merge_credentials(
        [("credentials_secret", {"TOS_ACCESS_KEY": "ak", "TOS_SECRET_KEY": "sk", "TOS_SESSION_KEY": "st"}, False)]
    )
    assert (tos.access_key_id, tos.secret_access_key, tos.session_token) == ("ak", "sk", "st")
    # The request's own credentials are strict, yet take every key AIBrix's TOS downloader reads.
    dashed = merge_credentials([("credentials", {"access-key": "ak", "secret-key": "sk", "enable_crc": "true"}, True)])
    assert (dashed.access_key_id, dashed.secret_access_key) == ("ak", "sk")
    http = merge_credentials(
        [("additional_config", {"headers": {"Authorization": "Bearer x"}, "api-key": "engine"}, False)]
    )
    assert http.headers == (("Authorization", "Bearer x"),) and "engine" not in repr(http)
