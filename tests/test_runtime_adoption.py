"""Patio killed with SIGKILL and started again: the engines that survived are adopted, never
started twice; what no record explains is stopped; exactly one engine per port.

Patio runs as shipped (``dist/patio.pyz``, a real process); the engines are the fake
vLLM (tests/runtime_engines) it launches.  AIBrix's ``re_adopt`` (model_runtime.py) is the
behaviour kept: a live engine is adopted as it runs, a dead one is scheduled for a restart,
a record of a stop in progress has its stop finished.
"""

import json
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from runtime_support import ENGINES, TAG, kill_tagged, listens, runtime_env, strays, tagged, wait_for
from support import PatioProcess, http_call, http_json


class Pod:
    """The Patio processes of one test, sharing a registry; the engines they launch are tagged."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tag = uuid.uuid4().hex
        self.env = runtime_env(tmp, PYTHONPATH=str(ENGINES), **{TAG: self.tag})
        self.env["PATIO_RUNTIME_PYTHON"] = sys.executable
        self.patios: List[PatioProcess] = []

    def start(self) -> PatioProcess:
        patio = PatioProcess(env=self.env)
        self.patios.append(patio)
        return patio

    def patio_pids(self) -> List[int]:
        return [p.proc.pid for p in self.patios]

    def engines(self) -> List[int]:
        return tagged(self.tag, exclude=self.patio_pids())

    def leaders(self) -> List[int]:
        return [pid for pid in self.engines() if os.getpgid(pid) == pid]

    def registry(self) -> Dict[str, Any]:
        return json.loads(Path(self.env["PATIO_RUNTIME_REGISTRY"]).read_text())


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    p = Pod(tmp_path)
    try:
        yield p
        for patio in p.patios:
            if patio.returncode is None:
                patio.stop()
        left = strays(p.tag, exclude=p.patio_pids())
        assert not left, f"processes left behind: {left}"
    finally:
        for patio in p.patios:
            patio.kill()
        kill_tagged(p.tag, exclude=p.patio_pids())


def activate(patio: PatioProcess, pod: Pod, name: str = "tiny", **fields: Any) -> Dict[str, Any]:
    body = {"model_name": name, "artifact_url": str(pod.tmp / "models" / "tiny"), **fields}
    status, answer = http_json("POST", patio.url + "/v1/runtime/models/activate", body, timeout=60)
    assert status == 200, answer
    return answer


def models(patio: PatioProcess) -> Dict[str, Any]:
    return {m["model_name"]: m for m in http_json("GET", patio.url + "/v1/runtime/models")[1]["models"]}


def ready(patio: PatioProcess, name: str = "tiny") -> Dict[str, Any]:
    return wait_for(lambda: models(patio).get(name, {}).get("ready") and models(patio)[name], 20, f"{name} ready")


def adoptions(patio: PatioProcess, result: str) -> float:
    for line in http_call("GET", patio.url + "/metrics")[2].decode().splitlines():
        if line.startswith(f'patio_runtime_adoptions_total{{result="{result}"}} '):
            return float(line.split()[-1])
    raise AssertionError("no adoption metric")


def restarts(patio: PatioProcess, name: str = "tiny") -> int:
    snapshot = http_json("GET", patio.url + "/v1/runtime/snapshot")[1]
    return int({m["model_name"]: m for m in snapshot["models"]}[name]["restart_count"])


def crash(patio: PatioProcess) -> None:
    patio.proc.send_signal(signal.SIGKILL)
    patio.proc.wait(10)


def complete(port: int) -> None:
    status, body = http_json("POST", f"http://127.0.0.1:{port}/v1/completions", {"model": "tiny", "max_tokens": 2})
    assert status == 200, body


def test_a_surviving_engine_is_adopted_not_started_again(pod: Pod) -> None:
    first = pod.start()
    port = activate(first, pod, engine_config={"args": {"--fake-worker": ""}})["port"]
    ready(first)
    leader = pod.leaders()
    assert len(leader) == 1
    crash(first)
    assert pod.leaders() == leader, "the engine outlives a Patio killed with SIGKILL"
    second = pod.start()
    listed = ready(second)
    assert listed["port"] == port and listed["phase"] == "active"
    assert pod.leaders() == leader and listens(port) == leader  # one engine on that port: the same
    assert pod.registry()["engines"][0]["pid"] == leader[0]
    assert adoptions(second, "adopted") == 1
    complete(port)
    # The adopted engine is supervised: killed, it is restarted.
    os.kill(leader[0], signal.SIGKILL)
    wait_for(lambda: restarts(second) == 1 and ready(second), 20, "restarted and ready")
    assert len(pod.leaders()) == 1 and pod.leaders() != leader and len(listens(port)) == 1
    assert second.stop() == 0
    assert not pod.engines(), "SIGTERM of Patio stopped the adopted engine's whole group"


def test_an_engine_that_died_with_patio_is_restarted_and_its_remains_removed(pod: Pod) -> None:
    first = pod.start()
    port = activate(first, pod, engine_config={"args": {"--fake-worker": "", "--fake-worker-ignores-term": ""}})["port"]
    ready(first)
    crash(first)
    leader = pod.leaders()[0]
    orphaned = [pid for pid in pod.engines() if pid != leader]
    os.kill(leader, signal.SIGKILL)  # the worker, ignoring SIGTERM, is left in the old group
    wait_for(lambda: not pod.leaders(), 5, "the leader gone")
    second = pod.start()
    ready(second)
    assert adoptions(second, "restart_scheduled") == 1
    assert all(pid not in pod.engines() for pid in orphaned), "the remains of the dead engine were killed"
    assert len(pod.leaders()) == 1 and len(listens(port)) == 1


def test_an_engine_no_record_explains_is_stopped(pod: Pod) -> None:
    first = pod.start()
    activate(first, pod)
    ready(first)
    crash(first)
    Path(pod.env["PATIO_RUNTIME_REGISTRY"]).write_text("{not json")
    second = pod.start()
    assert models(second) == {}  # answered once the adoption is done
    assert not pod.engines(), "the orphan was stopped before the runtime answered"
    assert adoptions(second, "orphan_stopped") == 1 and adoptions(second, "invalid") == 1


def test_an_engine_whose_pid_never_reached_the_registry_is_found_by_its_markers(pod: Pod) -> None:
    first = pod.start()
    port = activate(first, pod)["port"]
    ready(first)
    crash(first)
    leader = pod.leaders()
    registry = pod.registry()
    registry["engines"][0].update(pid=None, pid_start_time=None, phase="booting")  # a crash right after the spawn
    Path(pod.env["PATIO_RUNTIME_REGISTRY"]).write_text(json.dumps(registry))
    second = pod.start()
    ready(second)
    assert pod.leaders() == leader and listens(port) == leader
    assert pod.registry()["engines"][0]["pid"] == leader[0]


def test_a_stop_interrupted_by_the_crash_is_finished(pod: Pod) -> None:
    first = pod.start()
    activate(first, pod)
    ready(first)
    crash(first)
    registry = pod.registry()
    registry["engines"][0]["phase"] = "stopping"
    Path(pod.env["PATIO_RUNTIME_REGISTRY"]).write_text(json.dumps(registry))
    second = pod.start()
    assert models(second) == {} and pod.registry()["engines"] == []
    assert not pod.engines() and adoptions(second, "stopped") == 1
