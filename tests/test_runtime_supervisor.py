"""The supervisor with real engine processes (the fake engines, started by Patio as it starts
vLLM and SGLang): activation, readiness, restarts with backoff, the budget, the ready
timeout, deactivation of the whole group, the port freed, bounded logs, credentials kept
out of argv and logs, sleep and wake of launched engines, and no process left behind by
any test (every test ends with the stray check)."""

import json
import os
import signal
import socket
import stat
import struct
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from runtime_support import Rt, listens, runtime_component, runtime_patios, tagged, wait_for
from support import free_port, http_call, http_json


@pytest.fixture
def rt_factory(tmp_path: Path, monkeypatch: Any) -> Iterator[Any]:
    yield from runtime_patios(tmp_path, monkeypatch)


@pytest.fixture
def rt(rt_factory: Any) -> Rt:
    return rt_factory()


def leader_pid(rt: Rt, name: str = "tiny") -> int:
    record = runtime_component(rt.patio.app).runtime.store.get(name)
    assert record is not None and record.pid
    return int(record.pid)


def cmdline(pid: int) -> List[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def complete(port: int, model: str = "tiny") -> Any:
    status, body = http_json("POST", f"http://127.0.0.1:{port}/v1/completions", {"model": model, "max_tokens": 2})
    assert status == 200, body
    return body


def test_activate_serves_on_the_returned_port_and_keeps_secrets_out_of_argv_logs_and_registry(
    rt: Rt, caplog: Any
) -> None:
    caplog.set_level("DEBUG")
    status, body = rt.activate(
        credentials={"HF_TOKEN": "hf_SECRETVALUE", "AWS_SECRET_ACCESS_KEY": "AWSSECRET"},
        engine_config={"args": {"--max-model-len": "128"}},
        claim_ref={"namespace": "ns", "name": "claim", "uid": "uid-1"},
    )
    assert status == 200, body
    assert body == {
        "status": "success",
        "model_name": "tiny",
        "port": body["port"],
        "ipc_name": "kvc_tiny",
        "message": None,
    }
    listed = rt.ready()
    assert listed == {
        "model_name": "tiny",
        "port": body["port"],
        "ipc_name": "kvc_tiny",
        "phase": "active",
        "ready": True,
        "kv_used_bytes": 0,
        "kv_total_bytes": 0,
    }
    assert complete(body["port"])["model"] == "tiny"  # the served name is the model name
    pid = leader_pid(rt)
    argv = cmdline(pid)
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert ["--served-model-name", "tiny"] == argv[
        argv.index("--served-model-name") : argv.index("--served-model-name") + 2
    ]
    assert "--max-model-len" in argv and "--enable-sleep-mode" not in argv  # the probe said: CPU
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"HF_TOKEN=hf_SECRETVALUE" in environ  # the credential is in the environment...
    registry = Path(rt.env["PATIO_RUNTIME_REGISTRY"])
    log_dir = Path(rt.env["PATIO_RUNTIME_LOG_DIR"])
    texts = {
        "argv": " ".join(argv),
        "registry": registry.read_text(),
        "engine log": "".join(p.read_text() for p in log_dir.iterdir()),
        "Patio's log": caplog.text,
        "snapshot": json.dumps(rt.snapshot()),
    }
    for where, text in texts.items():
        assert "SECRETVALUE" not in text and "AWSSECRET" not in text, f"a credential in the {where}"
    assert stat.S_IMODE(registry.stat().st_mode) == 0o600
    assert stat.S_IMODE(registry.parent.stat().st_mode) == 0o700
    saved = json.loads(registry.read_text())["engines"][0]
    assert (saved["pid"], saved["port"], saved["phase"]) == (pid, body["port"], "active")
    snap = rt.snapshot()["tiny"]
    assert snap["claim_ref"] == {"namespace": "ns", "name": "claim", "uid": "uid-1"}
    assert (snap["alive"], snap["restart_count"], snap["last_error"], snap["request_metrics_observed"]) == (
        True,
        0,
        None,
        True,
    )


def test_concurrent_activations_of_one_name_start_one_engine(rt: Rt) -> None:
    answers: List[Any] = []
    threads = [threading.Thread(target=lambda: answers.append(rt.activate())) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [status for status, _ in answers] == [200] * 5
    assert len({body["port"] for _, body in answers}) == 1
    rt.ready()
    leaders = [pid for pid in tagged(rt.tag) if "vllm.entrypoints.openai.api_server" in cmdline(pid)]
    assert len(leaders) == 1
    assert listens(answers[0][1]["port"]) == leaders


def test_activation_of_the_same_name_with_other_flags_is_a_conflict(rt: Rt) -> None:
    assert rt.activate()[0] == 200
    status, body = rt.activate(engine_config={"args": {"--max-model-len": "64"}})
    assert (status, body["status"], body["type"]) == (409, "error", "conflict")
    assert "deactivate it first" in body["message"] and body["model_name"] == "tiny"


def test_kill_9_of_the_engine_restarts_it_and_its_group_goes_with_it(rt: Rt) -> None:
    status, body = rt.activate(engine_config={"args": {"--fake-worker": ""}})
    assert status == 200, body
    rt.ready()
    old = leader_pid(rt)
    workers = [pid for pid in tagged(rt.tag) if pid != old and os.getpgid(pid) == old]
    assert workers, "the fake engine's worker is in its process group"
    os.kill(old, signal.SIGKILL)
    store = runtime_component(rt.patio.app).runtime.store
    wait_for(lambda: store.get("tiny").pid not in (None, old), 20, "relaunch")
    listed = rt.ready()
    assert listed["port"] == body["port"] and rt.snapshot()["tiny"]["restart_count"] == 1
    assert all(
        not Path(f"/proc/{w}").exists() or open(f"/proc/{w}/stat").read().split(")")[-1].split()[0] == "Z"
        for w in workers
    )
    assert 'patio_runtime_engine_restarts_total{model="tiny"} 1' in rt.metrics()
    complete(body["port"])


def test_an_engine_that_exits_at_once_is_a_500_with_its_last_words(rt: Rt) -> None:
    status, body = rt.activate(engine_config={"args": {"--fake-exit-at-once": ""}})
    assert status == 500 and body["status"] == "error" and body["type"] == "engine_start_failed"
    assert "exited with status 3" in body["message"] and "cannot load the model" in body["message"]
    assert rt.models() == {}
    assert json.loads(Path(rt.env["PATIO_RUNTIME_REGISTRY"]).read_text())["engines"] == []


def test_an_engine_never_ready_times_out_restarts_then_fails(rt_factory: Any) -> None:
    rt = rt_factory(PATIO_RUNTIME_READY_TIMEOUT="0.5", PATIO_RUNTIME_MAX_RESTARTS="1")
    assert rt.activate(engine_config={"args": {"--fake-never-ready": ""}})[0] == 200
    snap = wait_for(lambda: rt.snapshot()["tiny"]["phase"] == "failed" and rt.snapshot()["tiny"], 30, "failed")
    assert "not ready within 0.5s" in snap["last_error"] and "restart budget exhausted" in snap["last_error"]
    assert (snap["alive"], snap["ready"], snap["restart_count"]) == (False, False, 1)
    assert not tagged(rt.tag), "a failed model has no process"
    status, body = rt.activate(engine_config={"args": {"--fake-never-ready": ""}})
    assert status == 409 and "restart budget" in body["message"]
    assert 'patio_runtime_restart_budget_exhausted_total{model="tiny"} 1' in rt.metrics()
    assert rt.post("deactivate", {"model_name": "tiny", "mode": "stop"}) == (200, {"status": "success"})
    assert rt.models() == {}


def test_ports_in_use_are_refused(rt: Rt) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, body = rt.activate(port=port)
        assert (status, body["type"], body["param"]) == (409, "conflict", "port")
    status, body = rt.activate(port=rt.patio.port)
    assert status == 409 and "in use" in body["message"]
    assert rt.models() == {}


def test_deactivate_stops_the_whole_group_frees_the_port_and_refuses_activation_meanwhile(rt: Rt) -> None:
    status, body = rt.activate(engine_config={"args": {"--fake-worker": "", "--fake-worker-ignores-term": ""}})
    assert status == 200
    port = body["port"]
    rt.ready()
    group = tagged(rt.tag)
    assert len(group) == 2
    result: List[Any] = []
    stopping = threading.Thread(
        target=lambda: result.append(rt.post("deactivate", {"model_name": "tiny", "mode": "stop"}))
    )
    stopping.start()
    wait_for(lambda: rt.models().get("tiny", {}).get("phase") == "stopping", 5, "stopping")
    status, body = rt.activate()
    assert status == 409 and "being deactivated" in body["message"]
    stopping.join(30)
    assert result == [(200, {"status": "success"})]
    assert not tagged(rt.tag), "the worker that ignores SIGTERM was killed with the group"
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))  # free
    assert rt.models() == {} and not list(Path(rt.env["PATIO_RUNTIME_LOG_DIR"]).iterdir())
    assert rt.post("deactivate", {"model_name": "tiny"}) == (200, {"status": "success"})  # unknown: success


def test_sigterm_of_patio_stops_every_engine_within_the_budget(rt_factory: Any) -> None:
    rt = rt_factory(PATIO_SHUTDOWN_TIMEOUT="6", PATIO_DRAIN_TIMEOUT="1")
    for name in ("a", "b"):
        assert (
            rt.activate(name, engine_config={"args": {"--fake-worker": "", "--fake-worker-ignores-term": ""}})[0] == 200
        )
    rt.ready("a")
    rt.ready("b")
    assert len(tagged(rt.tag)) == 4
    started = time.monotonic()
    rt.patio.stop()
    assert time.monotonic() - started < 8
    assert not tagged(rt.tag)
    assert json.loads(Path(rt.env["PATIO_RUNTIME_REGISTRY"]).read_text())["engines"] == []


def test_the_engine_log_stays_bounded(rt_factory: Any) -> None:
    rt = rt_factory(PATIO_RUNTIME_LOG_MAX_BYTES=str(64 * 1024))
    assert rt.activate(engine_config={"args": {"--fake-log-spam": str(200 * 1024)}})[0] == 200
    rt.ready()
    log = Path(runtime_component(rt.patio.app).runtime.store.get("tiny").log_path)
    wait_for(lambda: Path(str(log) + ".1").exists(), 10, "a trimmed copy")
    time.sleep(3)
    # At most the bound plus what the engine writes between two trims (one second here), twice.
    assert log.stat().st_size <= 64 * 1024 + 400 * 1024
    assert Path(str(log) + ".1").stat().st_size <= 64 * 1024 + 400 * 1024
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_a_python_without_vllm_is_a_clear_500(rt_factory: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("PYTHONPATH", "/nonexistent")
    rt = rt_factory()
    status, body = rt.activate()
    assert status == 500 and "cannot import vLLM" in body["message"] and "PATIO_RUNTIME_PYTHON" in body["message"]


def test_sleep_and_wake_of_a_launched_engine(rt_factory: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("FAKE_SLEEP_MODE", "1")  # the probe answers as vLLM on CUDA does
    rt = rt_factory(PATIO_RUNTIME_DRAIN_TIMEOUT="1.5")
    status, body = rt.activate(engine_config={"args": {"--fake-token-delay": "0.02"}})
    assert status == 200
    rt.ready()
    assert "--enable-sleep-mode" in cmdline(leader_pid(rt))
    op = {"model_name": "tiny", "level": 1, "operation_id": "op-1"}
    assert rt.post("sleep", op) == (
        200,
        {"status": "success", "model_name": "tiny", "operation_id": "op-1", "applied": True, "phase": "sleeping"},
    )
    assert rt.models()["tiny"]["ready"] is False
    assert 'patio_engine_sleeping{model="tiny"} 1' in rt.metrics()
    assert rt.post("sleep", op)[1]["applied"] is False  # the same operation again
    assert rt.post("sleep", {**op, "operation_id": "op-2"})[1]["applied"] is False  # already asleep
    wake = {"model_name": "tiny", "operation_id": "w-1"}
    assert rt.post("wake", wake)[1] == {
        "status": "success",
        "model_name": "tiny",
        "operation_id": "w-1",
        "applied": True,
        "phase": "active",
    }
    assert rt.post("wake", {**wake, "operation_id": "w-2"})[1]["applied"] is False  # awake already
    complete(body["port"])
    # A sleep while another drains: the second is a 409, the first is refused as still serving.
    port = body["port"]
    inflight = [
        threading.Thread(
            target=lambda: http_json(
                "POST", f"http://127.0.0.1:{port}/v1/completions", {"model": "tiny", "max_tokens": 200}, timeout=60
            )
        )
        for _ in range(3)
    ]
    for thread in inflight:
        thread.start()
    time.sleep(0.3)
    first: List[Any] = []
    draining = threading.Thread(target=lambda: first.append(rt.post("sleep", {**op, "operation_id": "op-3"})))
    draining.start()
    time.sleep(0.3)
    status, busy = rt.post("sleep", {**op, "operation_id": "op-4"})
    assert status == 409 and "sleep is in progress" in busy["message"]
    draining.join(20)
    assert first[0][0] == 409 and first[0][1]["type"] == "engine_busy"
    for thread in inflight:
        thread.join(30)
    assert rt.models()["tiny"]["phase"] == "active"
    text = rt.metrics()
    assert 'patio_engine_sleep_transitions_total{model="tiny",action="sleep",result="busy"} 1' in text
    assert 'patio_engine_sleep_transitions_total{model="tiny",action="sleep",result="applied"} 1' in text
    assert 'patio_engine_sleep_transition_duration_seconds_count{action="wake",result="applied"} 1' in text


def test_kv_limit_writes_aibrixs_segment_or_answers_409(rt: Rt) -> None:
    assert rt.activate()[0] == 200
    op = {"model_name": "tiny", "limit_bytes": 1 << 30, "operation_id": "kv-1"}
    status, body = rt.post("kv-limit", op)
    assert status == 409 and "no kvcached segment" in body["message"]
    shm = Path(rt.env["PATIO_RUNTIME_SHM_DIR"])
    shm.mkdir(parents=True, exist_ok=True)
    (shm / "kvc_tiny").write_bytes(struct.pack("<3q", 8 << 30, 1 << 20, 2 << 20) + b"\0" * 40)
    assert rt.post("kv-limit", op)[1]["applied"] is True
    assert struct.unpack("<3q", (shm / "kvc_tiny").read_bytes()[:24]) == (1 << 30, 1 << 20, 2 << 20)
    assert rt.post("kv-limit", op)[1]["applied"] is False
    listed = rt.models()["tiny"]
    assert (listed["kv_total_bytes"], listed["kv_used_bytes"]) == (1 << 30, 3 << 20)
    snap = rt.snapshot()["tiny"]
    assert (snap["kv_capacity_bytes"], snap["kv_used_bytes"]) == (1 << 30, 3 << 20)
    assert rt.post("kv-limit", {**op, "model_name": "nope"})[0] == 404


def test_sglang_is_launched_with_its_memory_saver_and_sleeps(rt: Rt) -> None:
    status, body = rt.activate(engine="sglang", engine_config={"args": {"--mem-fraction-static": "0.5"}})
    assert status == 200, body
    rt.ready()
    argv = cmdline(leader_pid(rt))
    assert argv[1:3] == ["-m", "sglang.launch_server"] and "--model-path" in argv
    assert "--enable-memory-saver" in argv and "--enable-metrics" in argv
    assert rt.post("sleep", {"model_name": "tiny", "level": 2, "operation_id": "s"})[1]["phase"] == "sleeping"
    assert rt.post("wake", {"model_name": "tiny", "operation_id": "w"})[1]["phase"] == "active"
    complete(body["port"])


def test_two_models_at_once(rt: Rt) -> None:
    answers: Dict[str, Any] = {}
    threads = [threading.Thread(target=lambda n=n: answers.__setitem__(n, rt.activate(n))) for n in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    ports = [answers[n][1]["port"] for n in ("a", "b")]
    assert len({answers[n][1]["port"] for n in answers}) == 3  # activated together: never one port twice
    assert rt.post("deactivate", {"model_name": "c"})[0] == 200
    rt.ready("a")
    rt.ready("b")
    assert complete(ports[0], "a")["model"] == "a" and complete(ports[1], "b")["model"] == "b"
    assert 'patio_runtime_engines{phase="active"} 2' in rt.metrics()


def test_a_relaunch_frees_the_remains_of_a_dead_leader_first(rt: Rt) -> None:
    assert rt.activate(engine_config={"args": {"--fake-worker": "", "--fake-worker-ignores-term": ""}})[0] == 200
    rt.ready()
    port = rt.models()["tiny"]["port"]
    old = leader_pid(rt)
    os.kill(old, signal.SIGKILL)  # the worker, ignoring SIGTERM, stays in the old group
    store = runtime_component(rt.patio.app).runtime.store
    wait_for(lambda: store.get("tiny").pid not in (None, old) and rt.models()["tiny"]["ready"], 20, "relaunched")
    assert len(listens(port)) == 1 and len(tagged(rt.tag)) == 2  # the new leader and its new worker
    assert all(os.getpgid(pid) == leader_pid(rt) for pid in tagged(rt.tag))


def test_runtime_routes_need_the_api_key(rt_factory: Any) -> None:
    rt = rt_factory(PATIO_API_KEY="k3y")
    for method, path in (
        ("GET", "/v1/runtime/models"),
        ("GET", "/v1/runtime/snapshot"),
        ("POST", "/v1/runtime/models/activate"),
    ):
        status, headers, _ = http_call(method, rt.url + path, {} if method == "POST" else None)
        assert status == 401 and "bearer" in headers["www-authenticate"].lower()
    status, _ = http_json("GET", rt.url + "/v1/runtime/models", headers={"Authorization": "Bearer k3y"})
    assert status == 200
    assert free_port()


def test_a_registry_that_cannot_be_written_fails_the_activation_and_leaves_nothing(
    rt_factory: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the registry's directory should be")
    rt = rt_factory(PATIO_RUNTIME_REGISTRY=str(blocker / "engines.json"))
    status, body = rt.activate()
    assert (
        status == 500 and body["type"] == "registry_not_saved" and "cannot save the engine registry" in body["message"]
    )
    assert rt.models() == {} and not tagged(rt.tag)


def test_a_remote_artifact_is_downloaded_by_patio_and_the_engine_loads_the_copy(rt: Rt) -> None:
    import http.server
    import socketserver

    files = rt.tmp / "served"
    files.mkdir()
    (files / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    seen: List[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(files), **kwargs)

        def log_message(self, *args: Any) -> None:
            seen.append(self.headers.get("Authorization") or "")

    with socketserver.TCPServer(("127.0.0.1", 0), Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/config.json"
        status, body = rt.activate("remote", artifact_url=url)
        server.shutdown()
    assert status == 200, body
    record = runtime_component(rt.patio.app).runtime.store.get("remote")
    downloaded = Path(record.model_path)
    assert downloaded.parts[-2:] == ("runtime", "remote") and (downloaded / "config.json").exists()
    argv = cmdline(leader_pid(rt, "remote"))
    assert argv[argv.index("--model") + 1] == str(downloaded)
    assert rt.snapshot()["remote"]["artifact_url"] == url and seen
