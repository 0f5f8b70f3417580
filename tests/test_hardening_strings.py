"""Issue 13, string rows: control characters (12), lone surrogates and poisoned files (13),
credentials in URIs (14, 15), redirects off HTTP (18), relative paths (22).

Over the real server, against the fake engine and a real HTTP file server; requests
are sent as raw JSON bytes where the exact escape matters (``"\\ud800"``).
"""

import json
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest
from artifacts_fakes import FileServer
from fakes.engine import FakeEngine
from support import RunningPatio, http_call, http_json, make_settings

from patio.artifacts.fetch.manifest import FORMAT
from patio.artifacts.uri import parse_uri
from patio.errors import BadRequest

WEIGHTS = b"w" * 4096
JSON = {"Content-Type": "application/json"}


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[Dict[str, Any]]:
    files = FileServer({"/a/adapter_model.safetensors": WEIGHTS, "/m/model.bin": WEIGHTS})
    engine = FakeEngine("vllm")
    try:
        yield {"files": files, "engine": engine, "tmp": tmp_path}
    finally:
        engine.stop()
        files.stop()


def _patio(world: Dict[str, Any]) -> RunningPatio:
    tmp = world["tmp"]
    env = {
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": world["engine"].url,
        "PATIO_STATE_DIR": str(tmp / "state"),
        "PATIO_ADAPTER_DIR": str(tmp / "adapters"),
        "PATIO_MODELS_ROOT": str(tmp / "models"),
        "DOWNLOADER_MAX_RETRIES": "1",
    }
    return RunningPatio(make_settings(["--lora-reconcile-interval", "0", "--lora-retry-attempts", "1"], env))


def _raw(patio: RunningPatio, path: str, raw: bytes) -> Tuple[int, Dict[str, Any]]:
    status, _, body = http_call("POST", patio.url + path, raw, headers=JSON)
    return status, json.loads(body)


def _get(patio: RunningPatio, path: str) -> Tuple[int, Any]:
    status, _, body = http_call("GET", patio.url + path)
    return status, json.loads(body)


def _no_engine_load(world: Dict[str, Any]) -> None:
    engine = world["engine"]
    assert engine.calls_to(engine.load_path()) == []


# --- row 12: a newline in a path cannot forge a log line -----------------------------------------


def test_row12_control_characters_in_paths_are_refused(world: Dict[str, Any], caplog: Any) -> None:
    forged = "/models/a\n2099-01-01 00:00:00,000 CRITICAL patio: FORGED"
    caplog.set_level(logging.DEBUG)
    with _patio(world) as patio:
        for field in ("lora_path", "artifact_url"):
            status, error = http_json("POST", patio.url + "/v1/lora_adapter/load", {"lora_name": "a", field: forged})
            assert (status, error["param"]) == (400, field)
            assert "control characters" in error["message"] and "FORGED" not in error["message"]
        status, error = http_json(
            "POST", patio.url + "/v1/model/download", {"model_uri": "hf://org/name", "local_dir": "x\ny"}
        )
        assert (status, error["param"]) == (400, "local_dir")
    _no_engine_load(world)
    assert not any("FORGED" in record.getMessage() for record in caplog.records)


BAD_CALLS = [
    ("newline_path", "a", "/models/a\nFORGED"),
    ("surrogate_path", "a", "/models/\ud800"),
    ("secret_uri", "a", "s3://KEY:SECRET@bucket/p"),
    ("relative_path", "a", "org/name"),
    ("newline_name", "a\n", "/models/a"),
]


@pytest.mark.parametrize("name,source", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_row12_the_manager_checks_every_caller(world: Dict[str, Any], name: str, source: str) -> None:
    # The adapters file reaches the manager without the HTTP layer: the same rules hold there
    # (every caller builds a LoadRequest, which checks them).
    from patio.lora.component import LoraComponent
    from patio.lora.request import LoadRequest

    with _patio(world) as patio:
        manager = patio.app.find(LoraComponent).manager
        with pytest.raises(BadRequest) as caught:
            patio.call(lambda: manager.load(LoadRequest(name, source)))
        assert "FORGED" not in caught.value.message and "SECRET" not in caught.value.message
        assert manager.adapters == {}
    _no_engine_load(world)


# --- row 13: lone surrogates are a 400, and a poisoned file never breaks a listing for good --------

SURROGATE_BODIES = [
    ("lora_path", "/v1/load_lora_adapter", b'{"lora_name": "a", "lora_path": "/models/\\ud800"}'),
    ("artifact_url", "/v1/lora_adapter/load", b'{"lora_name": "a", "artifact_url": "s3://b/\\udfff"}'),
    ("lora_name", "/v1/load_lora_adapter", b'{"lora_name": "a\\ud800", "lora_path": "/models/a"}'),
    ("model_uri", "/v1/model/download", b'{"model_uri": "s3://bucket/\\ud800"}'),
    ("local_dir", "/v1/model/download", b'{"model_uri": "hf://org/name", "local_dir": "d\\ud800"}'),
    ("model_name", "/v1/model/download", b'{"model_uri": "hf://org/name", "model_name": "\\ud800"}'),
]


@pytest.mark.parametrize("field,path,raw", SURROGATE_BODIES, ids=[c[0] for c in SURROGATE_BODIES])
def test_row13_lone_surrogates_are_refused(world: Dict[str, Any], field: str, path: str, raw: bytes) -> None:
    with _patio(world) as patio:
        status, error = _raw(patio, path, raw)
        assert (status, error["param"]) == (400, field), error
        for listing in ("/v1/lora_adapters", "/v1/model/list"):
            assert _get(patio, listing)[0] == 200
    _no_engine_load(world)


def test_row13_a_poisoned_state_file_is_skipped(world: Dict[str, Any]) -> None:
    state = world["tmp"] / "state"
    state.mkdir()
    good = {"name": "good", "source": "/models/good", "path": "/models/good", "remote": False, "extra": {}}
    poisoned = [
        {"name": "bad", "source": "/models/bad", "path": "/models/\ud800"},
        {"name": "nl\n", "source": "/models/x", "path": "/models/x"},
        {"name": "ctl", "source": "/models/\x1b[31m", "path": "/models/ctl"},
        {"name": "opt", "source": "/models/o", "path": "/models/o", "extra": {"pinned": "\udc80"}},
        {"name": "nopath", "source": "/models/n"},
    ]
    document = {"version": 1, "adapters": [*poisoned, good]}
    (state / "lora-adapters.json").write_text(json.dumps(document))  # ensure_ascii: the escapes survive
    world["engine"].adapters["good"] = "/models/good"
    with _patio(world) as patio:
        deadline_names = None
        for _ in range(200):
            status, body = _get(patio, "/v1/lora_adapters")
            assert status == 200
            deadline_names = [a["name"] for a in body["data"]]
            if deadline_names:
                break
        assert deadline_names == ["good"]


def test_row13_a_poisoned_manifest_does_not_break_the_model_list(world: Dict[str, Any]) -> None:
    meta = world["tmp"] / "models" / "m" / ".patio"
    meta.mkdir(parents=True)
    manifest = {"format": FORMAT, "complete": True, "source": "s3://b/\ud800", "files": [], "file_count": "x"}
    (meta / "manifest.json").write_text(json.dumps(manifest))  # ensure_ascii: the escape survives
    with _patio(world) as patio:
        status, body = _get(patio, "/v1/model/list")
        assert status == 200, body
        listed = {m["name"]: m for m in body["data"]}
        assert (listed["m"]["model_uri"], listed["m"]["files"]) == (None, None)


# --- rows 14, 15: credentials in a URI are refused and never echoed or stored ---------------------

SECRET_URIS = [
    ("s3_key_secret", "s3://AKIA:SECRETKEY@bucket/prefix"),
    ("https_user_password", "https://user:SECRETKEY@example.com/a/adapter.bin"),
    ("http_token_only", "http://SECRETKEY@example.com/a/adapter.bin"),
    ("hf_token", "hf://user:SECRETKEY@org/name"),
    ("gs_key", "gs://SECRETKEY@bucket/p"),
]


@pytest.mark.parametrize("uri", [c[1] for c in SECRET_URIS], ids=[c[0] for c in SECRET_URIS])
def test_row14_credentials_in_uris_are_refused_and_not_echoed(world: Dict[str, Any], uri: str, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    with _patio(world) as patio:
        for path, body, field in (
            ("/load_lora_adapter", {"lora_name": "a", "lora_path": uri}, "lora_path"),
            ("/v1/lora_adapter/load", {"lora_name": "a", "artifact_url": uri}, "artifact_url"),
            ("/v1/model/download", {"model_uri": uri}, "model_uri"),
        ):
            status, _, raw = http_call("POST", patio.url + path, body)
            assert status == 400 and json.loads(raw)["param"] == field
            assert b"SECRETKEY" not in raw
        for listing in ("/v1/lora_adapters", "/v1/model/list"):
            assert b"SECRETKEY" not in http_call("GET", patio.url + listing)[2]
    assert not any("SECRETKEY" in record.getMessage() for record in caplog.records)
    assert not any(b"SECRETKEY" in p.read_bytes() for p in world["tmp"].rglob("*") if p.is_file())


def test_row14_secrets_in_other_invalid_uris_are_not_quoted() -> None:
    for uri in ("s3://bucket?X-Amz-Signature=SECRETKEY/p", "hf://org/name?token=SECRETKEY"):
        with pytest.raises(BadRequest) as caught:
            parse_uri(uri, param="lora_path", bare_hub=False)
        assert "SECRETKEY" not in caught.value.message


def test_row15_the_state_file_keeps_no_signature(world: Dict[str, Any]) -> None:
    files, engine = world["files"], world["engine"]
    signed = files.url + "/a/adapter_model.safetensors?X-Amz-Credential=AKIA&X-Amz-Signature=SIGNATURE"
    with _patio(world) as patio:
        status, body = http_json("POST", patio.url + "/load_lora_adapter", {"lora_name": "a", "lora_path": signed})
        assert status == 200, body
        path = body["lora_path"]
    raw = (world["tmp"] / "state" / "lora-adapters.json").read_bytes()
    assert b"SIGNATURE" not in raw and b"AKIA" not in raw
    saved = json.loads(raw)
    assert "without userinfo or query strings" in saved["note"]
    entry = saved["adapters"][0]
    assert entry["source_redacted"] is True and entry["path"] == path
    # The engine restarts and forgets; a new Patio reloads it from the local copy, without the store.
    engine.restart(forget=True)
    requests_before = len(files.seen)
    with _patio(world) as patio:
        for _ in range(500):
            if engine.adapters.get("a") == path:
                break
            http_call("GET", patio.url + "/health")
        assert engine.adapters.get("a") == path
    assert len(files.seen) == requests_before


# --- row 18: redirects only to http(s) ------------------------------------------------------------


@pytest.mark.parametrize(
    "location", ["file:///etc/passwd", "ftp://example.com/x", "gopher://x/"], ids=["file", "ftp", "gopher"]
)
def test_row18_non_http_redirects_are_refused(world: Dict[str, Any], location: str) -> None:
    files = world["files"]
    files.redirect["/m/model.bin"] = location
    with _patio(world) as patio:
        status, job = http_json("POST", patio.url + "/v1/model/download", {"model_uri": files.url + "/m/model.bin"})
        assert status == 202, job
        for _ in range(400):
            status, job = _get(patio, f"/v1/model/download/{job['id']}")
            if job["status"] not in ("queued", "running"):
                break
            http_call("GET", patio.url + "/health")
        assert job["status"] == "failed"
        assert "non-HTTP" in json.dumps(job["error"])
    assert not (world["tmp"] / "models" / "model.bin" / "model.bin").exists()


REDIRECTS = [
    ("file", "file:///etc/passwd", None),
    ("ftp", "ftp://example.com/x", None),
    ("javascript", "javascript:alert(1)", None),
    ("no_host", "http:///x", None),
    ("absolute_path", "/other/file.bin", "https://cdn.example.com/other/file.bin"),
    ("scheme_relative", "//mirror.example.com/f", "https://mirror.example.com/f"),
    ("https_elsewhere", "https://s3.example.com/b/k?sig=1", "https://s3.example.com/b/k?sig=1"),
]


@pytest.mark.parametrize("location,expected", [c[1:] for c in REDIRECTS], ids=[c[0] for c in REDIRECTS])
def test_row18_redirect_targets(location: str, expected: Any) -> None:
    # The one check both redirect loops (stores/http.py, stores/hub.py: HF, ModelScope) and HF's Link paging use.
    from patio.artifacts.errors import ArtifactError
    from patio.artifacts.fetch.net import redirect_target

    base = "https://cdn.example.com/repo/file.bin"
    if expected is None:
        with pytest.raises(ArtifactError, match="refused"):
            redirect_target(base, location, "GET x")
    else:
        assert redirect_target(base, location, "GET x") == expected


def test_row15_a_signed_source_whose_copy_is_gone_asks_for_a_new_load(world: Dict[str, Any]) -> None:
    import shutil

    files, engine = world["files"], world["engine"]
    signed = files.url + "/a/adapter_model.safetensors?X-Amz-Signature=SIGNATURE"
    with _patio(world) as patio:
        status, body = http_json("POST", patio.url + "/load_lora_adapter", {"lora_name": "a", "lora_path": signed})
        assert status == 200, body
    shutil.rmtree(body["lora_path"])
    engine.restart(forget=True)
    requests_before = len(files.seen)
    with _patio(world) as patio:
        view: Dict[str, Any] = {}
        for _ in range(500):
            view = {a["name"]: a for a in _get(patio, "/v1/lora_adapters")[1]["data"]}.get("a", {})
            if view.get("last_error"):
                break
        assert "load it again" in view["last_error"] and view["state"] == "loaded"
        assert "SIGNATURE" not in json.dumps(view)
    assert len(files.seen) == requests_before  # nothing was fetched without the signature
    assert engine.adapters == {}


# --- row 22: relative paths are refused; Hub repos are named with hf:// ---------------------------

RELATIVE = ["relative/path", "org/name", "./a", "a", "../models/a", "org/name@main"]


@pytest.mark.parametrize("source", RELATIVE, ids=RELATIVE)
def test_row22_relative_lora_paths_are_refused(world: Dict[str, Any], source: str) -> None:
    with _patio(world) as patio:
        for field in ("lora_path", "artifact_url"):
            status, error = http_json("POST", patio.url + "/v1/lora_adapter/load", {"lora_name": "a", field: source})
            assert (status, error["param"]) == (400, field), error
            assert "hf://org/name" in error["message"]
    _no_engine_load(world)


def test_row22_the_one_rule_per_field() -> None:
    assert parse_uri("org/name").kind == "hf"  # model_uri: AIBrix's bare Hub id, never a local path
    assert parse_uri("hf://org/name", bare_hub=False).repo_id == "org/name"
    with pytest.raises(BadRequest):
        parse_uri("org/name", param="lora_path", bare_hub=False)
