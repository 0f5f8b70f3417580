"""The adapters file reconciled against the fake engines (tests/fakes/engine.py, built from the
engines' contracts): add, remove, change source, a bad entry among good ones, the engine down then
back, Patio restarted mid-way, a ConfigMap-style symlink swap, invalid files, the limit, metrics."""

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Dict

import pytest
from fakes.engine import FakeEngine
from support import RunningPatio, http_call, http_json, make_settings

FAST = ["--adapters-file-interval", "0.05", "--adapter-apply-backoff", "0.02", "--adapter-apply-attempts", "3"]


def patio_for(engine: FakeEngine, tmp_path: Path, adapters_file: Path, *args: str, **env: str) -> RunningPatio:
    full = {
        "INFERENCE_ENGINE": engine.kind,
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "PATIO_STATE_DIR": str(tmp_path / "state"),
        "PATIO_ADAPTER_DIR": str(tmp_path / "adapters"),
        "PATIO_ADAPTERS_FILE": str(adapters_file),
        **env,
    }
    return RunningPatio(make_settings(["--lora-reconcile-interval", "0", *FAST, *args], full))


def syncer_file(path: Path, present: Dict[str, str], absent: Any = ()) -> None:
    """Write the syncer's shape, replacing the file whole (as an editor or kubelet would)."""
    lines = ["vLLMLoRAConfig:", "  name: test", "  ensureExist:", "    models:"]
    for name, source in present.items():
        lines += [f"    - id: {name}", f"      source: {source}"]
    if not present:
        lines[-1] = "    models: []"
    if absent:
        lines += ["  ensureNotExist:", "    models:"] + [f"    - id: {n}\n      source: /x" for n in absent]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def listing(patio: RunningPatio) -> Dict[str, Any]:
    status, body = http_json("GET", patio.url + "/v1/lora_adapters")
    assert status == 200
    return body


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.03)
    return False


def desired(patio: RunningPatio) -> Dict[str, Dict[str, Any]]:
    return {a["name"]: a for a in listing(patio)["desired"]["adapters"]}


def settled(patio: RunningPatio) -> bool:
    """The file was read and every adapter it names reached ok or failed."""
    statuses = desired(patio)
    return bool(statuses) and all(a["state"] in ("ok", "failed") for a in statuses.values())


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_add_then_remove_leaves_api_adapters_alone(kind, tmp_path):
    adapters = tmp_path / "adapters.yaml"
    syncer_file(adapters, {"a": "/models/a", "b": "/models/b"})
    with FakeEngine(kind) as engine, patio_for(engine, tmp_path, adapters) as patio:
        assert wait_for(lambda: engine.adapters == {"a": "/models/a", "b": "/models/b"})
        assert (
            http_json("POST", patio.url + "/load_lora_adapter", {"lora_name": "c", "lora_path": "/models/c"})[0] == 200
        )
        views = {a["name"]: a for a in listing(patio)["data"]}
        assert {n: v["origin"] for n, v in views.items()} == {"a": "file", "b": "file", "c": "api"}
        assert wait_for(lambda: settled(patio))
        body = listing(patio)["desired"]
        assert body["state"] == "applied" and body["shape"] == "syncer" and body["name"] == "test"
        assert {a["name"]: a["state"] for a in body["adapters"]} == {"a": "ok", "b": "ok"}

        syncer_file(adapters, {"a": "/models/a"})
        assert wait_for(lambda: engine.adapters == {"a": "/models/a", "c": "/models/c"})
        assert wait_for(lambda: set(desired(patio)) == {"a"})
        # ensureNotExist removes whoever loaded it.
        syncer_file(adapters, {"a": "/models/a"}, absent=["c"])
        assert wait_for(lambda: engine.adapters == {"a": "/models/a"})
        assert wait_for(lambda: desired(patio)["c"]["state"] == "ok" and desired(patio)["c"]["action"] == "absent")
        assert len(engine.calls_to(engine.load_path())) == 3  # a, b, c: nothing loaded twice


def test_a_file_adapter_takes_over_an_api_adapter_with_the_same_source(tmp_path):
    adapters = tmp_path / "adapters.json"
    adapters.write_text('{"adapters": []}')
    with FakeEngine("vllm") as engine, patio_for(engine, tmp_path, adapters) as patio:
        assert http_json("POST", patio.url + "/load_lora_adapter", {"lora_name": "a", "lora_path": "/m/a"})[0] == 200
        adapters.write_text(json.dumps({"adapters": [{"name": "a", "source": "/m/a"}]}))
        assert wait_for(lambda: {a["name"]: a["origin"] for a in listing(patio)["data"]} == {"a": "file"})
        adapters.write_text('{"adapters": []}')
        assert wait_for(lambda: engine.adapters == {})
    assert len(engine.calls_to(engine.load_path())) == 1


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_changed_source_reloads(kind, tmp_path):
    adapters = tmp_path / "adapters.yaml"
    syncer_file(adapters, {"a": "/models/a1"})
    with FakeEngine(kind) as engine, patio_for(engine, tmp_path, adapters) as patio:
        assert wait_for(lambda: engine.adapters == {"a": "/models/a1"})
        syncer_file(adapters, {"a": "/models/a2"})
        assert wait_for(lambda: engine.adapters == {"a": "/models/a2"})
        assert wait_for(lambda: desired(patio)["a"]["state"] == "ok")
        loads = [c.json() for c in engine.calls_to(engine.load_path())]
        # SGLang has no in-place load; vLLM's keeps reading the adapter from disk at every step
        # (vLLM #33791, patio/lora/inplace.py): both unload, then load.
        assert len(engine.calls_to(engine.unload_path())) == 1
        assert loads[-1] == {"lora_name": "a", "lora_path": "/models/a2"}


def test_one_bad_entry_never_blocks_the_others(tmp_path):
    adapters = tmp_path / "adapters.yaml"
    names = {f"good{i}": f"/models/good{i}" for i in range(6)}
    with FakeEngine("vllm") as engine:
        engine.valid_paths = set(names.values()) | {"/models/flaky"}
        engine.internal_error_paths = {"/models/flaky"}  # 500 every time: retried, then failed
        syncer_file(adapters, {"missing": "/models/missing", "flaky": "/models/flaky", **names})
        with patio_for(engine, tmp_path, adapters) as patio:
            assert wait_for(lambda: set(engine.adapters) == set(names))
            assert wait_for(lambda: settled(patio))
            status = desired(patio)
            assert status["missing"]["state"] == "failed" and status["missing"]["attempts"] == 1  # 404: no retry
            assert "No adapter found" in status["missing"]["last_error"]
            assert status["flaky"]["state"] == "failed" and status["flaky"]["attempts"] == 3
            assert "rank 64" in status["flaky"]["last_error"]
            assert all(status[n]["state"] == "ok" for n in names)
            metrics = http_call("GET", patio.url + "/metrics")[2].decode()
            assert 'patio_lora_reconcile_failures_total{adapter="flaky"} 3' in metrics
            assert 'patio_lora_reconcile_failures_total{adapter="missing"} 1' in metrics
            # Fixing the file retries what failed.
            engine.internal_error_paths = set()
            syncer_file(adapters, {"flaky": "/models/flaky", **names})
            assert wait_for(lambda: "flaky" in engine.adapters)
            assert wait_for(lambda: "missing" not in desired(patio))
            metrics = http_call("GET", patio.url + "/metrics")[2].decode()
            assert 'adapter="missing"' not in metrics  # gone with the adapter: bounded cardinality


RETRY_CASES = {
    "tried again after the interval": ("0.2", True),
    "0 never tries again by itself": ("0", False),
}


@pytest.mark.parametrize("interval, heals", RETRY_CASES.values(), ids=RETRY_CASES.keys())
def test_a_failed_adapter_is_tried_again_after_the_interval(tmp_path, interval, heals):
    """The adapter's files arrive after the ConfigMap was applied (a GitOps race): it heals alone."""
    adapters = tmp_path / "adapters.yaml"
    with FakeEngine("vllm") as engine:
        engine.valid_paths = {"/models/ok"}
        syncer_file(adapters, {"late": "/models/late", "ok": "/models/ok"})
        with patio_for(engine, tmp_path, adapters, "--adapter-failed-retry-interval", interval) as patio:
            assert wait_for(lambda: desired(patio).get("late", {}).get("state") == "failed")
            assert ("next_attempt_at" in desired(patio)["late"]) is heals
            engine.valid_paths.add("/models/late")  # uploaded now; the file is not touched
            if heals:
                assert wait_for(lambda: engine.adapters.get("late") == "/models/late")
                assert wait_for(lambda: desired(patio)["late"]["state"] == "ok")
            else:
                time.sleep(1.0)  # five times the other case's interval, twenty file rounds
                assert desired(patio)["late"]["state"] == "failed" and "late" not in engine.adapters
            assert engine.adapters.get("ok") == "/models/ok"


def test_engine_down_then_back(tmp_path):
    adapters = tmp_path / "adapters.yaml"
    with FakeEngine("vllm") as engine:
        engine.stop()
        syncer_file(adapters, {"a": "/models/a"})
        with patio_for(engine, tmp_path, adapters, "--lora-retry-attempts", "1") as patio:
            assert wait_for(lambda: desired(patio).get("a", {}).get("state") == "failed")
            assert "engine" in desired(patio)["a"]["last_error"]
            assert http_call("GET", patio.url + "/ready")[0] == 503  # health known as down
            engine.start()
            # The engine health watch tells Patio the engine is back (a readiness probe also asks it).
            assert wait_for(lambda: http_call("GET", patio.url + "/ready")[0] == 200 and engine.adapters != {})
            assert engine.adapters == {"a": "/models/a"}
            assert wait_for(lambda: desired(patio)["a"]["state"] == "ok")


def test_patio_restarted_midway(tmp_path):
    adapters = tmp_path / "adapters.yaml"
    syncer_file(adapters, {"a": "/models/a", "b": "/models/b"})
    with FakeEngine("sglang") as engine:
        with patio_for(engine, tmp_path, adapters) as patio:
            assert wait_for(lambda: len(engine.adapters) == 2 and settled(patio))
        # While Patio is down the file drops b and adds c.
        syncer_file(adapters, {"a": "/models/a", "c": "/models/c"})
        with patio_for(engine, tmp_path, adapters) as patio:
            assert wait_for(lambda: engine.adapters == {"a": "/models/a", "c": "/models/c"})
            assert wait_for(lambda: settled(patio))
            assert {a["name"]: a["origin"] for a in listing(patio)["data"]} == {"a": "file", "c": "file"}
    loads = [c.json()["lora_name"] for c in engine.calls_to(engine.load_path())]
    assert loads.count("a") == 1  # the second Patio took a over, it did not load it again


def test_configmap_symlink_swap(tmp_path):
    """kubelet's layout: configmap.yaml -> ..data/configmap.yaml, ..data -> ..TIMESTAMP; an update
    writes a new timestamped directory and renames a new ..data link over the old one."""
    mount = tmp_path / "config"
    mount.mkdir()

    def publish(version: str, present: Dict[str, str]) -> None:
        directory = mount / f"..2026_11_29_{version}"
        directory.mkdir()
        syncer_file(directory / "configmap.yaml", present)
        os.symlink(directory.name, mount / "..data_tmp")
        os.rename(mount / "..data_tmp", mount / "..data")

    publish("01", {"a": "/models/a"})
    os.symlink("..data/configmap.yaml", mount / "configmap.yaml")
    with FakeEngine("vllm") as engine, patio_for(engine, tmp_path, mount / "configmap.yaml") as patio:
        assert wait_for(lambda: engine.adapters == {"a": "/models/a"})
        publish("02", {"b": "/models/b"})
        for old in mount.glob("..2026_11_29_01"):
            for child in old.iterdir():
                child.unlink()
            old.rmdir()
        assert wait_for(lambda: engine.adapters == {"b": "/models/b"})
        assert wait_for(lambda: settled(patio))


def test_invalid_or_missing_file_changes_nothing(tmp_path):
    adapters = tmp_path / "adapters.yaml"
    syncer_file(adapters, {"a": "/models/a"})
    with FakeEngine("vllm") as engine, patio_for(engine, tmp_path, adapters) as patio:
        assert wait_for(lambda: engine.adapters == {"a": "/models/a"})
        adapters.write_text("vLLMLoRAConfig:\n  ensureExist:\n    models:\n    - id: b\n      source: &x /m\n")
        assert wait_for(lambda: listing(patio)["desired"]["state"] == "invalid")
        error = listing(patio)["desired"]["error"]
        assert "line 5, column 15: anchors" in error and "nothing of it was applied" in error
        adapters.unlink()
        assert wait_for(lambda: listing(patio)["desired"]["state"] == "missing")
        time.sleep(0.2)
        assert engine.adapters == {"a": "/models/a"}
        assert len(engine.calls_to(engine.unload_path())) == 0


def test_a_thousand_adapters_stay_bounded_and_metrics_pass_promtool(tmp_path):
    adapters = tmp_path / "adapters.json"
    adapters.write_text(json.dumps({"adapters": [{"name": f"a{i}", "source": f"/m/{i}"} for i in range(1000)]}))
    with FakeEngine("sglang") as engine, patio_for(engine, tmp_path, adapters, "--max-adapters", "12") as patio:
        assert wait_for(lambda: len(engine.adapters) == 12 and settled(patio))
        body = listing(patio)["desired"]
        assert body["refused"]["count"] == 988 and body["refused"]["names"][0] == "a12"
        assert "names 1000 adapters; at most 12 are kept (--max-adapters)" in body["error"]
        # The API is held to the same bound.
        status, error = http_json("POST", patio.url + "/load_lora_adapter", {"lora_name": "x", "lora_path": "/x"})
        assert (status, error["type"]) == (409, "too_many_adapters")
        text = http_call("GET", patio.url + "/metrics")[2].decode()
    info = [line for line in text.splitlines() if line.startswith("patio_lora_adapter_info{")]
    assert len(info) == 12
    assert (
        'patio_lora_adapter_info{adapter="a0",state="loaded",source_scheme="local",pinned="false",origin="file"} 1'
        in text
    )
    assert 'patio_lora_adapters{state="loaded"} 12' in text
    assert 'patio_lora_adapters{state="failed"} 0' in text
    assert text.count("patio_lora_adapter_last_load_duration_seconds{") == 12
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode in (0, 3), check.stdout + check.stderr  # 3: lint remarks only


def test_residency_metrics_without_a_file(tmp_path):
    with FakeEngine("sglang") as engine:
        settings = make_settings(
            ["--lora-reconcile-interval", "0"],
            {"INFERENCE_ENGINE": "sglang", "INFERENCE_ENGINE_ENDPOINT": engine.url, "PATIO_STATE_DIR": str(tmp_path)},
        )
        with RunningPatio(settings) as patio:
            body = {"lora_name": "p", "lora_path": "/m/p", "pinned": True}
            assert http_json("POST", patio.url + "/load_lora_adapter", body)[0] == 200
            text = http_call("GET", patio.url + "/metrics")[2].decode()
            assert "desired" not in listing(patio)
    assert (
        'patio_lora_adapter_info{adapter="p",state="loaded",source_scheme="local",pinned="true",origin="api"} 1' in text
    )


def test_dropped_while_loading_ends_unloaded(tmp_path):
    adapters = tmp_path / "adapters.yaml"
    syncer_file(adapters, {"slow": "/models/slow"})
    with FakeEngine("vllm") as engine:
        engine.lora_delay = 0.4
        with patio_for(engine, tmp_path, adapters) as patio:
            assert wait_for(lambda: desired(patio).get("slow", {}).get("state") == "applying")
            syncer_file(adapters, {})
            assert wait_for(lambda: desired(patio) == {} and listing(patio)["data"] == [])
            assert engine.adapters == {}


def test_an_api_unload_of_a_file_adapter_is_undone(tmp_path):
    adapters = tmp_path / "adapters.yaml"
    syncer_file(adapters, {"a": "/models/a"})
    with FakeEngine("vllm") as engine, patio_for(engine, tmp_path, adapters) as patio:
        assert wait_for(lambda: settled(patio) and engine.adapters == {"a": "/models/a"})
        assert http_json("POST", patio.url + "/unload_lora_adapter", {"lora_name": "a"})[0] == 200
        assert wait_for(lambda: engine.adapters == {"a": "/models/a"})  # the file wins


def test_sglang_pinning_from_the_file(tmp_path):
    adapters = tmp_path / "adapters.json"

    def write(doc: Dict[str, Any]) -> None:
        (tmp_path / "tmp.json").write_text(json.dumps(doc))
        os.replace(tmp_path / "tmp.json", adapters)

    write({"adapters": []})
    with FakeEngine("sglang") as engine:
        with patio_for(engine, tmp_path, adapters) as patio:
            body = {"lora_name": "a", "lora_path": "/m/a", "pinned": True}
            assert http_json("POST", patio.url + "/load_lora_adapter", body)[0] == 200
            write({"adapters": [{"name": "a", "source": "/m/a"}]})
            assert wait_for(lambda: settled(patio))
            assert len(engine.calls_to(engine.load_path())) == 1  # the file says nothing of pinning: kept
            assert listing(patio)["data"][0]["origin"] == "file"
            write({"adapters": [{"name": "a", "source": "/m/a", "pinned": False}]})
            assert wait_for(lambda: len(engine.calls_to(engine.load_path())) == 2 and settled(patio))
            assert engine.calls_to(engine.load_path())[-1].json()["pinned"] is False
            text = http_call("GET", patio.url + "/metrics")[2].decode()
    labels = 'adapter="a",state="loaded",source_scheme="local",pinned="false",origin="file"'
    assert f"patio_lora_adapter_info{{{labels}}} 1" in text


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_patio_stopped_during_a_load_and_started_again(kind, tmp_path):
    """The engine finishes a load whose caller is gone; the next Patio finds it there and is content."""
    adapters = tmp_path / "adapters.yaml"
    syncer_file(adapters, {"a": "/models/a", "b": "/models/b"})
    with FakeEngine(kind) as engine:
        engine.lora_delay = 0.5
        with patio_for(engine, tmp_path, adapters) as patio:
            assert wait_for(lambda: any(s["state"] == "applying" for s in desired(patio).values()))
        time.sleep(0.6)  # the engine completes what it was asked
        engine.lora_delay = 0.0
        with patio_for(engine, tmp_path, adapters) as patio:
            assert wait_for(lambda: settled(patio) and engine.adapters == {"a": "/models/a", "b": "/models/b"})
            assert {a["name"]: a["state"] for a in desired(patio).values()} == {"a": "ok", "b": "ok"}


def test_swapping_a_full_set_for_another_converges(tmp_path):
    """At --max-adapters, the file swaps three adapters for three others: the additions find no
    room until the removals are done.  They used to fail for --adapter-failed-retry-interval
    (300 s) with too_many_adapters; a finished removal now wakes them."""
    adapters = tmp_path / "adapters.yaml"
    syncer_file(adapters, {"a": "/m/a", "b": "/m/b", "c": "/m/c"})
    args = ("--max-adapters", "3", "--adapter-apply-attempts", "1", "--adapter-failed-retry-interval", "0")
    with FakeEngine("vllm") as engine, patio_for(engine, tmp_path, adapters, *args) as patio:
        assert wait_for(lambda: set(engine.adapters) == {"a", "b", "c"})
        engine.lora_delay = 0.3  # removals take a while; additions are refused at once meanwhile
        syncer_file(adapters, {"d": "/m/d", "e": "/m/e", "f": "/m/f"})
        assert wait_for(lambda: set(engine.adapters) == {"d", "e", "f"}, timeout=20), desired(patio)
        assert wait_for(lambda: all(s["state"] == "ok" for s in desired(patio).values()))
