"""Resolver-directory mode (vLLM's lora_filesystem_resolver reads VLLM_LORA_RESOLVER_CACHE_DIR/NAME):
remote adapters named in the file are downloaded there whole, without a load call; removal deletes
the directory and unloads from the engine.  The store is the fake Hub of the artifact tests; the
real-vLLM version of this test is tests/e2e/test_vllm_resolver.py."""

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
from artifacts_fakes import FakeCdn, FakeHub, HubRepo
from fakes.engine import BASE_MODEL, FakeEngine
from support import RunningPatio, http_call, http_json, make_settings

# vLLM's resolver takes a LoRA config naming the served base model (filesystem_resolver.py, 0.32.0).
CONFIG = b'{"peft_type": "LORA", "r": 8, "base_model_name_or_path": "%s"}' % BASE_MODEL.encode()
FILES_V1 = {"adapter_config.json": CONFIG, "adapter_model.safetensors": b"w1" * 5000}
FILES_V2 = {"adapter_config.json": CONFIG, "adapter_model.safetensors": b"w2" * 5000}


@pytest.fixture()
def hub() -> Iterator[FakeHub]:
    cdn = FakeCdn()
    fake = FakeHub(cdn, page_size=100)
    fake.add(HubRepo("acme/a", FILES_V1, ("adapter_model.safetensors",)))
    fake.add(HubRepo("acme/b", FILES_V2, ("adapter_model.safetensors",)))
    try:
        yield fake
    finally:
        fake.stop()
        cdn.stop()


def patio_for(engine: FakeEngine, hub: FakeHub, tmp_path: Path) -> RunningPatio:
    env = {
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "PATIO_STATE_DIR": str(tmp_path / "state"),
        "PATIO_ADAPTER_DIR": str(tmp_path / "adapters"),
        "PATIO_ADAPTERS_FILE": str(tmp_path / "adapters.json"),
        "VLLM_LORA_RESOLVER_CACHE_DIR": str(tmp_path / "resolver"),  # the engine's own variable works too
        "HF_ENDPOINT": hub.url,
        "DOWNLOADER_MAX_RETRIES": "1",
    }
    argv = ["--lora-reconcile-interval", "0", "--adapters-file-interval", "0.05", "--adapter-apply-backoff", "0.02"]
    return RunningPatio(make_settings(argv, env))


def write(tmp_path: Path, adapters: Dict[str, str]) -> None:
    doc = {"adapters": [{"name": n, "source": s} for n, s in adapters.items()]}
    tmp = tmp_path / "adapters.json.tmp"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, tmp_path / "adapters.json")


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.03)
    return False


def views(patio: RunningPatio) -> Dict[str, Dict[str, Any]]:
    return {a["name"]: a for a in http_json("GET", patio.url + "/v1/lora_adapters")[1]["data"]}


def desired(patio: RunningPatio) -> Dict[str, Dict[str, Any]]:
    return {a["name"]: a for a in http_json("GET", patio.url + "/v1/lora_adapters")[1]["desired"]["adapters"]}


def files(directory: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def test_download_into_the_resolver_dir_without_a_load_call_then_remove(tmp_path, hub):
    resolver = tmp_path / "resolver"
    resolver.mkdir()
    write(tmp_path, {"a": "hf://acme/a", "local": "/models/local"})
    with FakeEngine("vllm") as engine, patio_for(engine, hub, tmp_path) as patio:
        assert wait_for(lambda: desired(patio).get("a", {}).get("state") == "ok")
        assert files(resolver / "a") == FILES_V1
        view = views(patio)["a"]
        assert (view["state"], view["origin"], view["path"]) == ("available", "resolver", str(resolver / "a"))
        # Local sources are loaded through the engine as usual; the remote one never is.
        assert wait_for(lambda: engine.adapters == {"local": "/models/local"})
        assert [c.json()["lora_name"] for c in engine.calls_to(engine.load_path())] == ["local"]
        assert sorted(p.name for p in resolver.iterdir() if not p.name.startswith(".")) == ["a"]
        metrics = http_call("GET", patio.url + "/metrics")[2].decode()
        labels = 'adapter="a",state="available",source_scheme="hf",pinned="false",origin="resolver"'
        assert f"patio_lora_adapter_info{{{labels}}} 1" in metrics
        assert 'patio_lora_adapter_last_load_duration_seconds{adapter="a"}' in metrics

        engine.adapters["a"] = str(resolver / "a")  # vLLM resolved it on a first request
        write(tmp_path, {"local": "/models/local"})
        assert wait_for(lambda: not (resolver / "a").exists() and "a" not in views(patio))
        # Deleting the directory does not free the engine's memory: Patio unloads too.
        assert [c.json() for c in engine.calls_to(engine.unload_path())] == [{"lora_name": "a"}]
        assert engine.adapters == {"local": "/models/local"}


def test_changed_source_replaces_the_directory_and_unloads_the_old_copy(tmp_path, hub):
    resolver = tmp_path / "resolver"
    resolver.mkdir()
    write(tmp_path, {"a": "hf://acme/a"})
    with FakeEngine("vllm") as engine, patio_for(engine, hub, tmp_path) as patio:
        assert wait_for(lambda: desired(patio).get("a", {}).get("state") == "ok")
        write(tmp_path, {"a": "hf://acme/b"})
        assert wait_for(lambda: (resolver / "a").is_dir() and files(resolver / "a") == FILES_V2)
        assert wait_for(lambda: desired(patio)["a"]["state"] == "ok")
        assert [c.json()["lora_name"] for c in engine.calls_to(engine.unload_path())] == ["a"]
        assert views(patio)["a"]["source"] == "hf://acme/b"


def test_restart_reuses_the_copy_and_sweeps_what_the_file_dropped(tmp_path, hub):
    resolver = tmp_path / "resolver"
    resolver.mkdir()
    foreign = resolver / "someone-else"
    foreign.mkdir()
    (foreign / "adapter_config.json").write_text("{}")
    write(tmp_path, {"a": "hf://acme/a", "b": "hf://acme/b"})
    with FakeEngine("vllm") as engine:
        with patio_for(engine, hub, tmp_path) as patio:
            assert wait_for(lambda: [s["state"] for s in desired(patio).values()] == ["ok", "ok"])
        downloads = len(hub.seen)
        write(tmp_path, {"a": "hf://acme/a"})  # b dropped while Patio was down
        # Leftovers of a Patio killed mid-way: a half download of b, a directory in the trash.
        (resolver / ".patio-staging" / "b" / ".patio").mkdir(parents=True)
        (resolver / ".patio-trash" / "old.1.x").mkdir(parents=True)
        with patio_for(engine, hub, tmp_path) as patio:
            assert wait_for(lambda: not (resolver / "b").exists())
            assert wait_for(lambda: views(patio).get("a", {}).get("state") == "available")
            assert len(hub.seen) == downloads  # a was taken over as it was on disk
            assert not (resolver / ".patio-staging" / "b").exists()
            assert wait_for(lambda: list((resolver / ".patio-trash").iterdir()) == [])  # b's rmtree may still run
        assert foreign.is_dir()  # not Patio's: never touched


def test_a_foreign_directory_in_the_way_fails_that_adapter_only(tmp_path, hub):
    resolver = tmp_path / "resolver"
    (resolver / "a").mkdir(parents=True)
    write(tmp_path, {"a": "hf://acme/a", "b": "hf://acme/b"})
    with FakeEngine("vllm") as engine, patio_for(engine, hub, tmp_path) as patio:
        assert wait_for(lambda: {n: s["state"] for n, s in desired(patio).items()} == {"a": "failed", "b": "ok"})
        assert "was not made by Patio" in desired(patio)["a"]["last_error"]
        assert os.listdir(resolver / "a") == []
