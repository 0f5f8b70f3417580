"""Self-healing: the engine restarts and forgets adapters; Patio restarts and remembers."""

import json
import os
import tempfile
import time

import pytest
from fakes.engine import FakeEngine
from support import RunningPatio, http_call, http_json, make_settings

from patio.lora.held_set import STATE_FILE, read_held_set, write_held_set


def patio_for(engine, state_dir, interval="0.2", *args):
    env = {"INFERENCE_ENGINE": engine.kind, "INFERENCE_ENGINE_ENDPOINT": engine.url, "PATIO_STATE_DIR": str(state_dir)}
    return RunningPatio(make_settings(["--lora-reconcile-interval", interval, *args], env))


def load(patio, name, path):
    status, body = http_json("POST", patio.url + "/load_lora_adapter", {"lora_name": name, "lora_path": path})
    assert status == 200, body


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def metric(patio, name):
    _, _, body = http_call("GET", patio.url + "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_engine_restart_that_forgets_adapters_is_healed(kind, tmp_path):
    with FakeEngine(kind) as engine, patio_for(engine, tmp_path) as patio:
        load(patio, "a", "/models/a")
        load(patio, "b", "/models/b")
        engine.restart(forget=True)
        assert engine.adapters == {}
        assert wait_for(lambda: engine.adapters == {"a": "/models/a", "b": "/models/b"})
        assert metric(patio, "patio_lora_reconcile_reloads_total") == 2
        view = {a["name"]: a for a in http_json("GET", patio.url + "/v1/lora_adapters")[1]["data"]}
        assert wait_for(
            lambda: all(a["engine_confirmed"] for a in http_json("GET", patio.url + "/v1/lora_adapters")[1]["data"])
        )
        assert {v["state"] for v in view.values()} == {"loaded"}


def test_engine_down_then_up_reloads_once_it_answers(tmp_path):
    with FakeEngine("vllm") as engine, patio_for(engine, tmp_path) as patio:
        load(patio, "a", "/models/a")
        engine.stop()
        time.sleep(0.5)  # a few failed rounds while it is down
        engine.adapters.clear()
        engine.start()
        assert wait_for(lambda: engine.adapters == {"a": "/models/a"})
        assert len(engine.calls_to(engine.load_path())) == 2


def test_engine_back_heals_without_probe_traffic(tmp_path):
    """Issue 13 row 21: with --lora-reconcile-interval 0 and nobody calling /ready, Patio's own
    engine health watch sees the engine go and come back, and the flip heals the adapters."""
    args = ("--engine-health-interval", "0.2", "--ready-cache-ttl", "0.1")
    with FakeEngine("vllm") as engine, patio_for(engine, tmp_path, "0", *args) as patio:
        load(patio, "a", "/models/a")
        engine.health_status = 503
        assert wait_for(lambda: metric(patio, "patio_engine_healthy") == 0.0)
        engine.adapters.clear()  # the engine restarted meanwhile
        engine.health_status = 200
        assert wait_for(lambda: engine.adapters == {"a": "/models/a"})
        assert http_call("GET", patio.url + "/ready")[0] == 200


def test_patio_restart_rebuilds_view_without_loading_twice(tmp_path):
    with FakeEngine("sglang") as engine:
        with patio_for(engine, tmp_path) as patio:
            load(patio, "a", "/models/a")
            load(patio, "b", "/models/b")
        saved = json.loads((tmp_path / STATE_FILE).read_text())
        assert [a["name"] for a in saved["adapters"]] == ["a", "b"]
        calls_before = len(engine.calls_to(engine.load_path()))
        with patio_for(engine, tmp_path) as patio:
            assert wait_for(
                lambda: all(a["engine_confirmed"] for a in http_json("GET", patio.url + "/v1/lora_adapters")[1]["data"])
            )
            names = [a["name"] for a in http_json("GET", patio.url + "/v1/lora_adapters")[1]["data"]]
            assert names == ["a", "b"]
            # Loading again through the new Patio is a no-op, not a second engine load.
            load(patio, "a", "/models/a")
        assert len(engine.calls_to(engine.load_path())) == calls_before


def test_patio_restart_reapplies_what_the_engine_lost(tmp_path):
    with FakeEngine("vllm") as engine:
        with patio_for(engine, tmp_path) as patio:
            load(patio, "a", "/models/a")
        engine.restart(forget=True)
        with patio_for(engine, tmp_path):
            assert wait_for(lambda: engine.adapters == {"a": "/models/a"})


def test_unloaded_adapters_leave_the_desired_set(tmp_path):
    with FakeEngine("vllm") as engine, patio_for(engine, tmp_path) as patio:
        load(patio, "a", "/models/a")
        assert http_json("POST", patio.url + "/unload_lora_adapter", {"lora_name": "a"})[0] == 200
        assert read_held_set(str(tmp_path)) == []
        engine.restart(forget=True)
        time.sleep(0.5)
        assert engine.adapters == {}


def test_state_file_is_replaced_atomically(tmp_path):
    write_held_set(str(tmp_path), [{"name": "a", "path": "/p"}])
    write_held_set(str(tmp_path), [{"name": "b", "path": "/q"}])
    assert [a["name"] for a in read_held_set(str(tmp_path))] == ["b"]
    assert sorted(os.listdir(tmp_path)) == [STATE_FILE]  # no temporary files left behind


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"version": 99, "adapters": []}', b"[]"],
    ids=["corrupt", "wrong_version", "wrong_shape"],
)
def test_unreadable_state_is_reported_not_fatal(tmp_path, content, caplog):
    (tmp_path / STATE_FILE).write_bytes(content)
    with pytest.raises(ValueError):
        read_held_set(str(tmp_path))
    with FakeEngine("vllm") as engine, patio_for(engine, tmp_path) as patio:
        load(patio, "a", "/models/a")
    assert [a["name"] for a in read_held_set(str(tmp_path))] == ["a"]


def test_unwritable_state_dir_fails_the_load_clearly():
    state = tempfile.mkdtemp()
    blocker = os.path.join(state, "file")
    open(blocker, "w").close()
    with FakeEngine("vllm") as engine, patio_for(engine, blocker) as patio:
        status, body = http_json("POST", patio.url + "/load_lora_adapter", {"lora_name": "a", "lora_path": "/p"})
        assert (status, body["type"]) == (500, "state_not_saved")
        assert blocker in body["message"] and "engine applied the change" in body["message"]


def test_full_disk_is_507(tmp_path, monkeypatch):
    import errno

    import patio.lora.held_set as state

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state, "atomic_write", full)
    with FakeEngine("vllm") as engine, patio_for(engine, tmp_path) as patio:
        status, body = http_json("POST", patio.url + "/load_lora_adapter", {"lora_name": "a", "lora_path": "/p"})
        assert (status, body["type"]) == (507, "state_not_saved")
        assert "No space left on device" in body["message"]
        assert http_call("GET", patio.url + "/health")[0] == 200


def test_adapter_sources_are_shown_without_credentials(tmp_path):
    from patio.lora.component import LoraComponent
    from patio.lora.records import LOADED, Adapter

    with FakeEngine("vllm") as engine, patio_for(engine, tmp_path, "0") as patio:
        manager = patio.app.find(LoraComponent).manager
        manager.adapters["x"] = Adapter(
            "x", "https://user:pw@host/a.bin?X-Amz-Signature=sekrit", "/p", remote=True, state=LOADED
        )
        status, _, raw = http_call("GET", patio.url + "/v1/lora_adapters")
    assert status == 200 and b"sekrit" not in raw and b"user:pw" not in raw
    assert json.loads(raw)["data"][0]["source"] == "https://host/a.bin?…"


def reconcile_failures(patio):
    _, _, body = http_call("GET", patio.url + "/metrics")
    prefix = "patio_lora_reconcile_failures_total{"
    lines = [line for line in body.decode().splitlines() if line.startswith(prefix)]
    return {line.split('"')[1]: float(line.split()[-1]) for line in lines}


def test_a_refused_reconcile_reload_counts_as_a_reconcile_failure(tmp_path):
    """patio_lora_reconcile_failures_total{adapter} counted only adapters-file failures (issue 15)."""
    with FakeEngine("vllm") as engine, patio_for(engine, tmp_path, "0.2") as patio:
        load(patio, "a", "/models/a")
        load(patio, "b", "/models/b")
        engine.fail_next.append((500, {"error": {"message": "out of memory", "type": "InternalServerError"}}))
        engine.restart(forget=True)
        # Reloads go in name order: the engine refuses a's first reload, takes b, then a's next.
        assert wait_for(lambda: engine.adapters == {"a": "/models/a", "b": "/models/b"})
        assert reconcile_failures(patio) == {"a": 1.0}
        # Bounded: the series goes with the adapter.
        status, body = http_json("POST", patio.url + "/unload_lora_adapter", {"lora_name": "a"})
        assert status == 200, body
        assert reconcile_failures(patio) == {}
