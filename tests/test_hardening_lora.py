"""Issue 13, LoRA rows: all-or-nothing changes (6, 7), bounded records and locks (8), whole-name match (11).

Each test reproduces a row of the issue's table over the real server, against the
fake engines of ``tests/fakes/engine.py`` (built from the engines' documented
contracts) and a real HTTP file server for remote adapters.
"""

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
from artifacts_fakes import FileServer
from fakes.engine import FakeEngine
from support import RunningPatio, http_call, http_json, make_settings

from patio.artifacts.component import ArtifactsComponent
from patio.errors import BadRequest
from patio.lora import records
from patio.lora.component import LoraComponent

WEIGHTS_V1 = b"v1" * 5000
WEIGHTS_V2 = b"v2" * 7000


def _patio(engine: FakeEngine, tmp: Path, *args: str) -> RunningPatio:
    env = {
        "INFERENCE_ENGINE": engine.kind,
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "PATIO_STATE_DIR": str(tmp / "state"),
        "PATIO_ADAPTER_DIR": str(tmp / "adapters"),
        "PATIO_MODELS_ROOT": str(tmp / "models"),
        "DOWNLOADER_MAX_RETRIES": "1",
    }
    return RunningPatio(make_settings(["--lora-reconcile-interval", "0", "--lora-retry-attempts", "1", *args], env))


def _listed(patio: RunningPatio) -> Dict[str, Dict[str, Any]]:
    status, body = http_json("GET", patio.url + "/v1/lora_adapters")
    assert status == 200
    return {a["name"]: a for a in body["data"]}


def _saved(tmp: Path) -> Dict[str, Dict[str, Any]]:
    data = json.loads((tmp / "state" / "lora-adapters.json").read_text())
    return {a["name"]: a for a in data["adapters"]}


def _eventually(probe: Any, timeout: float = 10.0) -> Any:
    """``probe()`` once it is truthy (the state file is read by a task started with the server)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def _load(patio: RunningPatio, body: Dict[str, Any]) -> Any:
    return http_json("POST", patio.url + "/v1/load_lora_adapter", body)


@pytest.fixture()
def files() -> Iterator[FileServer]:
    server = FileServer({"/v1/adapter_model.safetensors": WEIGHTS_V1, "/v2/adapter_model.safetensors": WEIGHTS_V2})
    try:
        yield server
    finally:
        server.stop()


# --- row 6: a failed in-place reload leaves the loaded adapter loaded and persisted ------------------

FAULTS = ["engine_down", "engine_error", "engine_timeout"]


@pytest.mark.parametrize("fault", FAULTS, ids=FAULTS)
def test_row06_failed_inplace_reload_keeps_the_loaded_adapter(tmp_path: Path, fault: str) -> None:
    engine = FakeEngine("vllm")
    try:
        with _patio(engine, tmp_path, "--lora-load-timeout", "0.5") as patio:
            status, _ = _load(patio, {"lora_name": "a", "lora_path": "/models/a1"})
            assert status == 200
            if fault == "engine_down":
                engine.stop()
            elif fault == "engine_error":
                engine.internal_error_paths.add("/models/a2")
            else:
                engine.lora_delay = 1.5
            status, body = _load(patio, {"lora_name": "a", "lora_path": "/models/a2", "load_inplace": True})
            assert status >= 500, body
            view = _listed(patio)["a"]
            assert (view["state"], view["path"]) == ("loaded", "/models/a1")
            assert "in-place reload from /models/a2 failed" in view["last_error"]
            assert _saved(tmp_path)["a"]["path"] == "/models/a1"
            # The next save (another adapter) still carries it: a restart must not forget it.
            if fault == "engine_down":
                engine.start()
            engine.lora_delay = 0.0
            assert _load(patio, {"lora_name": "b", "lora_path": "/models/b"})[0] == 200
            assert _saved(tmp_path)["a"]["path"] == "/models/a1"
        with _patio(engine, tmp_path) as again:
            assert _eventually(lambda: _listed(again).get("a", {}).get("state")) == "loaded"
    finally:
        engine.stop()


@pytest.mark.parametrize("inplace", [False, True], ids=["first_load", "inplace"])
def test_row06_a_timed_out_load_the_engine_applied_counts(tmp_path: Path, inplace: bool) -> None:
    # A timeout says nothing about what the engine did: Patio asks its /v1/models before failing.
    with FakeEngine("vllm") as engine, _patio(engine, tmp_path, "--lora-load-timeout", "0.3") as patio:
        if inplace:
            assert _load(patio, {"lora_name": "a", "lora_path": "/models/a1"})[0] == 200
        engine.adapters["a"] = "/models/a2"  # the engine has it already; its answer comes too late
        engine.lora_delay = 1.0
        status, body = _load(patio, {"lora_name": "a", "lora_path": "/models/a2", "load_inplace": inplace})
        assert status == 200, body
        view = _listed(patio)["a"]
        assert (view["state"], view["path"], view["engine_confirmed"]) == ("loaded", "/models/a2", True)
        assert _saved(tmp_path)["a"]["path"] == "/models/a2"


# --- row 7: a failed remote reload leaves the old files; a good one replaces them after the engine ---


def _files_of(path: str) -> Dict[str, bytes]:
    root = Path(path)
    return {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}


@pytest.mark.parametrize("fault", ["source_404", "engine_refuses"], ids=["source_404", "engine_refuses"])
def test_row07_failed_remote_reload_keeps_the_old_files(tmp_path: Path, files: FileServer, fault: str) -> None:
    with FakeEngine("vllm") as engine, _patio(engine, tmp_path) as patio:
        status, body = _load(patio, {"lora_name": "a", "lora_path": files.url + "/v1/adapter_model.safetensors"})
        assert status == 200, body
        old = body["lora_path"]
        assert _files_of(old) == {"adapter_model.safetensors": WEIGHTS_V1}
        new_path = "/v9/absent.safetensors" if fault == "source_404" else "/v2/adapter_model.safetensors"
        new_source = files.url + new_path
        if fault == "engine_refuses":
            engine.fail_next.append((500, {"error": {"message": "rank too large", "type": "InternalServerError"}}))
        status, body = _load(patio, {"lora_name": "a", "lora_path": new_source, "load_inplace": True})
        assert status in (404, 502), body
        assert _files_of(old) == {"adapter_model.safetensors": WEIGHTS_V1}  # the engine's files, intact
        assert engine.adapters == {"a": old}
        view = _listed(patio)["a"]
        assert (view["state"], view["path"]) == ("loaded", old)
        assert _saved(tmp_path)["a"]["path"] == old
        assert os.listdir(tmp_path / "adapters") == ["a"]  # the failed replacement left nothing behind


def test_row07_remote_reload_replaces_the_old_directory_after_the_engine(tmp_path: Path, files: FileServer) -> None:
    with FakeEngine("vllm") as engine, _patio(engine, tmp_path) as patio:
        _, body = _load(patio, {"lora_name": "a", "lora_path": files.url + "/v1/adapter_model.safetensors"})
        old = body["lora_path"]
        status, body = _load(
            patio,
            {"lora_name": "a", "lora_path": files.url + "/v2/adapter_model.safetensors", "load_inplace": True},
        )
        assert status == 200, body
        new = body["lora_path"]
        assert new != old and os.path.dirname(new) == os.path.dirname(old)  # a directory of its own
        assert engine.adapters == {"a": new} and _saved(tmp_path)["a"]["path"] == new
        assert _files_of(new) == {"adapter_model.safetensors": WEIGHTS_V2}
        assert not os.path.exists(old)  # deleted only once the engine and the state file moved on
        # And back again: the next replacement may reuse the plain name.
        status, body = _load(
            patio,
            {"lora_name": "a", "lora_path": files.url + "/v1/adapter_model.safetensors", "load_inplace": True},
        )
        assert status == 200 and engine.adapters == {"a": body["lora_path"]}
        assert os.listdir(tmp_path / "adapters") == [os.path.basename(body["lora_path"])]
        status, _ = http_json("POST", patio.url + "/v1/unload_lora_adapter", {"lora_name": "a"})
        assert status == 200 and os.listdir(tmp_path / "adapters") == []


# --- row 8: failed records and per-name locks are bounded ---------------------------------------------


def test_row08_failed_records_and_locks_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "MAX_FAILED_RECORDS", 20)
    with FakeEngine("vllm") as engine, _patio(engine, tmp_path) as patio:
        engine.valid_paths = {"/models/keep"}
        assert _load(patio, {"lora_name": "keep", "lora_path": "/models/keep"})[0] == 200
        for index in range(60):
            status, _ = _load(patio, {"lora_name": f"f{index}", "lora_path": f"/models/missing{index}"})
            assert status == 404
        manager = patio.app.find(LoraComponent).manager
        listed = _listed(patio)
        assert len(listed) == 21 and listed["keep"]["state"] == "loaded"
        assert {n for n, a in listed.items() if a["state"] == "failed"} == {f"f{i}" for i in range(40, 60)}
        assert len(manager.adapters) == 21
        assert len(manager._locks) == 0  # no lock outlives its last user
        # After the time bound, failed records go; what the engine and the state file need stays.
        monkeypatch.setattr(records, "FAILED_RECORD_TTL", 0.0)
        assert set(_listed(patio)) == {"keep"}
        assert set(_saved(tmp_path)) == {"keep"}


def test_row08_failed_records_never_block_a_load(tmp_path: Path) -> None:
    # --max-adapters bounds what Patio tracks; records of failed loads give way to a new load.
    with FakeEngine("vllm") as engine, _patio(engine, tmp_path, "--max-adapters", "3") as patio:
        engine.valid_paths = {"/models/a", "/models/b", "/models/c", "/models/d"}
        assert _load(patio, {"lora_name": "a", "lora_path": "/models/a"})[0] == 200
        for index in range(5):
            assert _load(patio, {"lora_name": f"f{index}", "lora_path": "/models/missing"})[0] == 404
        assert _load(patio, {"lora_name": "b", "lora_path": "/models/b"})[0] == 200
        assert _load(patio, {"lora_name": "c", "lora_path": "/models/c"})[0] == 200
        assert set(_listed(patio)) == {"a", "b", "c"}
        status, error = _load(patio, {"lora_name": "d", "lora_path": "/models/d"})
        assert (status, error["type"]) == (409, "too_many_adapters")  # loaded ones are never evicted


def test_row08_evicted_failed_downloads_leave_no_files(
    tmp_path: Path, files: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeEngine("vllm") as engine, _patio(engine, tmp_path) as patio:
        engine.valid_paths = set()  # the engine refuses every path: the download stays behind
        source = files.url + "/v1/adapter_model.safetensors"
        assert _load(patio, {"lora_name": "gone", "lora_path": source})[0] == 404
        assert (tmp_path / "adapters" / "gone" / "adapter_model.safetensors").exists()
        monkeypatch.setattr(records, "FAILED_RECORD_TTL", 0.0)
        assert _listed(patio) == {}
        assert _eventually(lambda: not (tmp_path / "adapters" / "gone").exists())


def test_row08_last_error_is_bounded(tmp_path: Path) -> None:
    with FakeEngine("vllm") as engine, _patio(engine, tmp_path) as patio:
        engine.fail_next.append((500, {"error": {"message": "x" * 100_000, "type": "InternalServerError"}}))
        assert _load(patio, {"lora_name": "big", "lora_path": "/models/big"})[0] == 502
        assert len(_listed(patio)["big"]["last_error"]) <= records.MAX_ERROR_CHARS


# --- row 11: names are matched whole -----------------------------------------------------------------

NAMES = ["nl\n", "a\r", "tab\t", "x\x00", "ok\u2028", "é"]


@pytest.mark.parametrize("name", NAMES, ids=["newline", "cr", "tab", "nul", "line_separator", "non_ascii"])
def test_row11_names_are_matched_whole(tmp_path: Path, name: str) -> None:
    with FakeEngine("vllm") as engine, _patio(engine, tmp_path) as patio:
        for path, body in (
            ("/v1/load_lora_adapter", {"lora_name": name, "lora_path": "/models/a"}),
            ("/load_lora_adapter", {"lora_name": name, "lora_path": "/models/a"}),
            ("/v1/unload_lora_adapter", {"lora_name": name}),
        ):
            status, error = http_json("POST", patio.url + path, body)
            assert (status, error["param"]) == (400, "lora_name"), (path, error)
            if name != "é":
                assert name not in error["message"]  # a dirty value is described, not echoed
        assert engine.calls_to(engine.load_path()) == [] and engine.calls_to(engine.unload_path()) == []
        seam = patio.app.find(ArtifactsComponent).adapters
        with pytest.raises(BadRequest):
            patio.call(lambda: seam.materialize(name, files_free_source(), None))


def files_free_source() -> str:
    return "hf://org/name"


def test_row11_the_schema_anchors_the_name() -> None:
    from patio.lora.api import LOAD_BODY

    pattern = LOAD_BODY.schema()["properties"]["lora_name"]["pattern"]
    assert pattern.startswith("^") and pattern.endswith("$")


def test_raw_newline_name_is_refused_in_the_body(tmp_path: Path) -> None:
    # The exact request of the issue: "nl\n" as JSON text, not through a client library.
    with FakeEngine("vllm") as engine, _patio(engine, tmp_path) as patio:
        raw = b'{"lora_name": "nl\\n", "lora_path": "/models/a"}'
        status, _, body = http_call(
            "POST", patio.url + "/v1/load_lora_adapter", raw, headers={"Content-Type": "application/json"}
        )
        assert status == 400 and json.loads(body)["param"] == "lora_name"
