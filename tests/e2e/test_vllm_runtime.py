"""The engine lifecycle against the real vLLM CPU build: Patio (dist/patio.pyz) launches the
engines itself through AIBrix's model-runtime API.

Three vLLM starts in all, shared by the scenarios in order: two models activated at once,
one of them restarted after kill -9.  Then Patio itself is killed with SIGKILL and started
again (the engines are adopted, not started again), the second engine becomes "the engine
beside" a third Patio for the drain scenario of vllm-project/vllm#45520, and everything is
deactivated.  After the last scenario no process of the module is left.

On CPU vLLM has no sleep mode (``vllm/platforms/interface.py`` is_sleep_mode_available:
CUDA, ROCm, XPU), which Patio learns from the engine's own Python and answers 409.  The
drain scenario runs beside an engine with ``PATIO_RUNTIME_SLEEP_MODE=on``: vLLM's
level-0 pause (``mode=wait``) and its scheduling wake work on CPU as on GPU, and a level-1
sleep there keeps the weights (``cpu_worker.py``: "sleep mode is not supported on CPU,
ignore it") while the engine reports itself asleep and holds new requests.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from conftest import ASSETS, ROOT, VENV, get, post_json, record_timing, stop_group, wait_http
from runtime_support import TAG, listens, strays, tagged  # tests/ is on sys.path (conftest)
from support import free_port

READY = 420  # one vLLM start on this loaded machine is about a minute; two at once, more
ENGINE_ARGS = {"--max-model-len": "128", "--max-num-seqs": "4"}


class RuntimePatio:
    """Patio from dist/patio.pyz with the model runtime on; engines inherit its environment."""

    def __init__(self, home: Path, tag: str, env: Optional[Dict[str, str]] = None) -> None:
        self.port = free_port()
        self.log = Path(tempfile.mkstemp(prefix="patio-runtime-", suffix=".log")[1])
        full = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", str(home)),  # vLLM's caches, as the tier's other engines use
            TAG: tag,
            # What the e2e tier gives vLLM (conftest.Vllm.start); launched engines inherit it.
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_HOST_IP": "127.0.0.1",
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "PATIO_RUNTIME": "true",
            "PATIO_RUNTIME_PYTHON": f"{VENV}/bin/python",
            "PATIO_RUNTIME_ENGINE_HOST": "127.0.0.1",
            "PATIO_RUNTIME_MODEL_ROOTS": str(ASSETS),
            "PATIO_RUNTIME_REGISTRY": str(home / "runtime" / "engines.json"),
            "PATIO_RUNTIME_LOG_DIR": str(home / "runtime" / "logs"),
            "PATIO_RUNTIME_PORTS": "23000-23100",
            "PATIO_RUNTIME_SUPERVISE_INTERVAL": "0.5",
            "PATIO_RUNTIME_RESTART_DELAY": "0.5",
            "PATIO_STATE_DIR": str(home / "state"),
            "INFERENCE_ENGINE": "vllm",
            "INFERENCE_ENGINE_ENDPOINT": "http://127.0.0.1:9",
            "PATIO_SCRAPE_ENGINE_METRICS": "false",
        }
        full.update(env or {})
        argv = [
            sys.executable,
            "-I",
            "-S",
            str(ROOT / "dist" / "patio.pyz"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(self.url + "/health", 20, self.proc, self.log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, route: str, body: Dict[str, Any], timeout: float = 120.0) -> Any:
        status, raw = post_json(self.url + "/v1/runtime/models/" + route, body, timeout=timeout)
        return status, json.loads(raw)

    def models(self) -> Dict[str, Any]:
        status, raw = get(self.url + "/v1/runtime/models", timeout=60)
        assert status == 200, raw
        return {m["model_name"]: m for m in json.loads(raw)["models"]}

    def snapshot(self) -> Dict[str, Any]:
        status, raw = get(self.url + "/v1/runtime/snapshot", timeout=60)
        assert status == 200, raw
        return {m["model_name"]: m for m in json.loads(raw)["models"]}

    def wait_ready(self, *names: str, timeout: float = READY) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = self.models()
            if all(listed.get(n, {}).get("ready") for n in names):
                return
            failed = [n for n in names if listed.get(n, {}).get("phase") == "failed"]
            assert not failed, (failed, self.snapshot(), self.tail())
            time.sleep(1.0)
        raise AssertionError(f"{names} not ready within {timeout}s: {self.snapshot()}\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            stop_group(self.proc, grace=30)
        return self.proc.returncode


class Pod:
    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="patio-runtime-e2e-"))
        self.tag = uuid.uuid4().hex
        self.patios: List[RuntimePatio] = []
        self.ports: Dict[str, int] = {}

    def start(self, env: Optional[Dict[str, str]] = None, home: Optional[Path] = None) -> RuntimePatio:
        patio = RuntimePatio(home or self.home, self.tag, env)
        self.patios.append(patio)
        return patio

    def engines(self) -> List[int]:
        return tagged(self.tag, exclude=[p.proc.pid for p in self.patios])

    def leaders(self) -> List[int]:
        return sorted(pid for pid in self.engines() if os.getpgid(pid) == pid)


@pytest.fixture(scope="module")
def pod(assets):
    p = Pod()
    try:
        yield p
    finally:
        for patio in p.patios:
            patio.stop()
        for pid in p.engines():
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except OSError:
                pass


def complete(port: int, model: str, tokens: int = 8, timeout: float = 120.0) -> Dict[str, Any]:
    status, raw = post_json(
        f"http://127.0.0.1:{port}/v1/completions",
        {"model": model, "prompt": "Hello world", "max_tokens": tokens, "temperature": 0, "ignore_eos": True},
        timeout=timeout,
    )
    assert status == 200, raw
    return json.loads(raw)


def gauges(port: int) -> Dict[str, float]:
    """vLLM's own scheduler gauges: ``running`` and ``waiting`` (summed over its engines)."""
    status, raw = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    seen = {"running": 0.0, "waiting": 0.0}
    for line in raw.decode().splitlines():
        for key in seen:
            if line.startswith(f"vllm:num_requests_{key}{{"):
                seen[key] += float(line.rsplit(" ", 1)[1])
    return seen


def activation(name: str) -> Dict[str, Any]:
    return {
        "model_name": name,
        "artifact_url": str(ASSETS / "model"),
        "engine": "vllm",
        "engine_config": {"args": ENGINE_ARGS},
    }


def test_1_two_models_at_once_each_served_on_its_port(pod):
    patio = pod.start()
    answers: Dict[str, Any] = {}
    started = time.monotonic()
    threads = [
        threading.Thread(target=lambda n=name: answers.__setitem__(n, patio.post("activate", activation(n))))
        for name in ("tiny-a", "tiny-b")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    for name in ("tiny-a", "tiny-b"):
        status, body = answers[name]
        assert status == 200 and body["status"] == "success", (body, patio.tail())
        pod.ports[name] = body["port"]
    assert pod.ports["tiny-a"] != pod.ports["tiny-b"]
    patio.wait_ready("tiny-a", "tiny-b")
    record_timing("runtime_two_vllm_activations_to_ready_seconds", round(time.monotonic() - started, 1))
    for name, port in pod.ports.items():
        assert complete(port, name)["model"] == name  # served under the model name
        assert len(listens(port)) == 1
    assert len(pod.leaders()) == 2
    # The CPU build cannot sleep: vLLM's own is_sleep_mode_available() said so to Patio.
    status, body = patio.post("sleep", {"model_name": "tiny-a", "level": 1, "operation_id": "s1"})
    assert status == 409 and body["type"] == "unsupported" and "is_sleep_mode_available" in body["message"]
    for pid in pod.leaders():
        assert b"--enable-sleep-mode" not in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_2_bad_input_against_the_running_engines(pod):
    patio = pod.patios[-1]
    status, body = patio.post("activate", activation("tiny-a"))
    assert (status, body["port"]) == (200, pod.ports["tiny-a"])  # the same engine, not a second
    status, body = patio.post("activate", {**activation("tiny-c"), "port": pod.ports["tiny-b"]})
    assert status == 409 and body["param"] == "port"
    status, body = patio.post("activate", {**activation("tiny-c"), "artifact_url": "file://" + str(ASSETS / "model")})
    assert status == 400 and "file://" in body["message"]
    status, body = patio.post("activate", {**activation("tiny-c"), "engine_config": {"args": {"--x": "a\nb"}}})
    assert status == 400 and "control characters" in body["message"]
    assert len(pod.leaders()) == 2 and "tiny-c" not in patio.models()


def test_3_kill_9_of_an_engine_restarts_it_on_its_port(pod):
    patio = pod.patios[-1]
    before = set(pod.leaders())
    victim = next(pid for pid in before if "tiny-a" in Path(f"/proc/{pid}/cmdline").read_bytes().decode())
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    deadline = time.monotonic() + 60
    while patio.snapshot()["tiny-a"]["restart_count"] < 1:
        assert time.monotonic() < deadline, patio.tail()
        time.sleep(0.5)
    patio.wait_ready("tiny-a")
    record_timing("runtime_vllm_restart_after_kill_seconds", round(time.monotonic() - started, 1))
    assert complete(pod.ports["tiny-a"], "tiny-a")
    assert len(pod.leaders()) == 2 and victim not in pod.leaders()
    assert len(listens(pod.ports["tiny-a"])) == 1


def test_4_kill_9_of_patio_then_start_again_adopts_exactly_one_engine_per_port(pod):
    first = pod.patios[-1]
    leaders = pod.leaders()
    first.kill()
    assert pod.leaders() == leaders, "the engines outlive a Patio killed with SIGKILL"
    second = pod.start()
    started = time.monotonic()
    second.wait_ready("tiny-a", "tiny-b", timeout=30)  # adopted: no vLLM start
    record_timing("runtime_adoption_to_ready_seconds", round(time.monotonic() - started, 1))
    assert pod.leaders() == leaders
    for name, port in pod.ports.items():
        assert listens(port) and len(listens(port)) == 1 and listens(port)[0] in leaders
        assert complete(port, name)
    assert second.snapshot()["tiny-a"]["restart_count"] == 1  # the record survived too


def test_5_vllm_45520_sleep_with_requests_in_flight_beside_a_real_vllm(pod):
    """The report's scenario, on the real engine: a sleep while requests decode is refused after
    the drain times out, every request finishes (none aborted), the engine serves on; once idle
    it sleeps and wakes."""
    port = pod.ports["tiny-b"]
    beside = pod.start(
        env={
            "INFERENCE_ENGINE_ENDPOINT": f"http://127.0.0.1:{port}",
            "PATIO_RUNTIME_SLEEP_MODE": "on",
            "PATIO_RUNTIME_DRAIN_TIMEOUT": "0.3",
            "PATIO_RUNTIME_REGISTRY": str(pod.home / "beside" / "engines.json"),
            "PATIO_RUNTIME_PORTS": "23200-23300",
        }
    )
    listed = beside.models()
    assert listed["tiny-b"]["port"] == port and listed["tiny-b"]["phase"] == "active"
    answers: List[Any] = []

    def one() -> None:
        answers.append(complete(port, "tiny-b", tokens=120))

    # 192 requests of 120 tokens: several seconds of work for the tiny model (4 run at once,
    # the rest queue).  The drain (0.3 s) either times out on the running batch or finishes with
    # requests still queued (vLLM holds what arrives during the pause); both are "still serving".
    threads = [threading.Thread(target=one) for _ in range(192)]
    for thread in threads:
        thread.start()
    # The engine is serving when its own gauges say so: a full batch running and more behind it.
    # On an idle machine 16 wait within 0.3 s; on a loaded one vLLM's API server admits the
    # requests about as fast as the 4 slots finish them (CI, stop 30: the queue never reached 16
    # in 30 s), so the queue stays short while the engine never idles: a running batch with at
    # least a third of the requests unanswered, for half a second on end, is as busy as the
    # drain needs (what arrives during the pause waits, and the drain reads the queue after it).
    deadline = time.monotonic() + 60
    busy_since: Optional[float] = None
    while True:
        seen, now = gauges(port), time.monotonic()
        busy_since = (busy_since or now) if seen["running"] >= 1 else None
        if busy_since is not None and (seen["waiting"] >= 16 or (now - busy_since >= 0.5 and len(answers) <= 128)):
            break
        assert len(answers) <= 128 and now < deadline, ("the engine was never busy", seen, len(answers))
        time.sleep(0.02)
    record_timing("runtime_busy_sleep_engine_waiting", seen["waiting"])
    status, body = beside.post("sleep", {"model_name": "tiny-b", "level": 1, "operation_id": "busy"})
    assert status == 409 and body["type"] == "engine_busy", body
    for thread in threads:
        thread.join(120)
    assert len(answers) == 192
    assert all(a["choices"][0]["finish_reason"] == "length" for a in answers)  # none aborted
    activity = beside.snapshot()["tiny-b"]  # request activity, as the controller reads it
    assert activity["request_metrics_observed"] is True and activity["request_success_total"] >= 192
    assert complete(port, "tiny-b")  # scheduling resumed
    assert json.loads(get(f"http://127.0.0.1:{port}/is_sleeping")[1]) == {"is_sleeping": False}
    # Idle now: the drain finishes at once, the engine sleeps; the pod is out of service.
    status, body = beside.post("sleep", {"model_name": "tiny-b", "level": 1, "operation_id": "idle"})
    assert (status, body["applied"], body["phase"]) == (200, True, "sleeping"), (body, beside.tail())
    assert json.loads(get(f"http://127.0.0.1:{port}/is_sleeping")[1]) == {"is_sleeping": True}
    status, raw = get(beside.url + "/ready")
    assert status == 503 and json.loads(raw)["param"] == "asleep"
    assert get(beside.url + "/health")[0] == 200
    status, body = beside.post("wake", {"model_name": "tiny-b", "operation_id": "wake"})
    assert (status, body["applied"], body["phase"]) == (200, True, "active"), body
    assert json.loads(get(f"http://127.0.0.1:{port}/is_sleeping")[1]) == {"is_sleeping": False}
    assert get(beside.url + "/ready")[0] == 200
    assert complete(port, "tiny-b")
    status, body = beside.post("deactivate", {"model_name": "tiny-b", "mode": "stop"})
    assert status == 409  # Patio did not start the engine beside it
    assert beside.stop() == 0
    assert len(listens(port)) == 1, "stopping the Patio beside it never stops the engine"


def test_6_deactivate_leaves_no_process_and_frees_the_ports(pod):
    patio = pod.patios[-2]  # the Patio that adopted the engines
    for name in ("tiny-a", "tiny-b"):
        status, body = patio.post("deactivate", {"model_name": name, "mode": "stop"})
        assert (status, body) == (200, {"status": "success"}), patio.tail()
    assert patio.models() == {}
    for port in pod.ports.values():
        assert listens(port) == []
    left = strays(pod.tag, exclude=[p.proc.pid for p in pod.patios], wait=10)
    assert not left, left
    assert json.loads((pod.home / "runtime" / "engines.json").read_text())["engines"] == []
    assert patio.stop() == 0
