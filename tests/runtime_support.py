"""Helpers of the runtime tests: settings for a Patio that launches the fake engines, waits,
and the check that no engine process survives a test.

The fake engines (``tests/runtime_engines``) are real processes started by Patio through
``python -m vllm.entrypoints.openai.api_server`` / ``sglang.launch_server``; they find the
fake packages on PYTHONPATH, which they inherit from Patio's environment, as a real engine
inherits the image's.  Each test tags that environment (``PATIOTEST_TAG``): every process
of the test carries it, so ``strays(tag)`` finds any it left behind.
"""

import json
import os
import random
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

from support import ROOT, RunningPatio, http_call, http_json, make_settings

ENGINES = ROOT / "tests" / "runtime_engines"
TAG = "PATIOTEST_TAG"


def port_range() -> str:
    # Below Linux's ephemeral ports (32768-60999), where free_port() picks Patio's own port.
    base = random.randrange(20000, 32000, 100)
    return f"{base}-{base + 100}"


def runtime_env(tmp: Path, **extra: str) -> Dict[str, str]:
    (tmp / "models" / "tiny").mkdir(parents=True, exist_ok=True)
    (tmp / "models" / "tiny" / "config.json").write_text("{}")
    env = {
        "PATIO_RUNTIME": "true",
        "PATIO_RUNTIME_PYTHON": sys.executable,
        "PATIO_RUNTIME_ENGINE_HOST": "127.0.0.1",
        "PATIO_RUNTIME_PORTS": port_range(),
        "PATIO_RUNTIME_REGISTRY": str(tmp / "runtime" / "engines.json"),
        "PATIO_RUNTIME_LOG_DIR": str(tmp / "runtime" / "logs"),
        "PATIO_RUNTIME_MODEL_ROOTS": str(tmp / "models"),
        "PATIO_RUNTIME_WEIGHT_CACHE_DIR": str(tmp / "cache"),
        "PATIO_RUNTIME_SHM_DIR": str(tmp / "shm"),
        "PATIO_RUNTIME_START_CHECK": "0.3",
        "PATIO_RUNTIME_SUPERVISE_INTERVAL": "0.1",
        "PATIO_RUNTIME_RESTART_DELAY": "0.1",
        "PATIO_RUNTIME_RESTART_MAX_DELAY": "0.4",
        "PATIO_RUNTIME_STOP_GRACE": "3",
        "PATIO_MODELS_ROOT": str(tmp / "downloads"),
        "PATIO_STATE_DIR": str(tmp / "state"),
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": "http://127.0.0.1:9",  # no engine beside Patio
    }
    env.update(extra)
    return env


def engine_environ(monkeypatch: Any, **extra: str) -> str:
    """What every engine inherits: the fake packages on PYTHONPATH and this test's tag."""
    tag = uuid.uuid4().hex
    monkeypatch.setenv("PYTHONPATH", str(ENGINES))
    monkeypatch.setenv(TAG, tag)
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    return tag


def tagged(tag: str, exclude: Optional[List[int]] = None) -> List[int]:
    """Live (non-zombie) processes whose environment carries ``PATIOTEST_TAG=tag``."""
    needle = f"{TAG}={tag}".encode()
    found = []
    skip = set(exclude or ()) | {os.getpid()}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                if needle not in handle.read():
                    continue
            with open(f"/proc/{name}/stat", "rb") as handle:
                state = handle.read().decode("ascii", "replace").rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(int(name))
    return found


def strays(tag: str, exclude: Optional[List[int]] = None, wait: float = 5.0) -> List[str]:
    """Processes of this test still running after ``wait`` seconds (their command lines)."""
    deadline = time.monotonic() + wait
    while True:
        left = tagged(tag, exclude)
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    out = []
    for pid in left:
        try:
            out.append(f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return out


def kill_tagged(tag: str, exclude: Optional[List[int]] = None) -> None:
    """Cleanup after a failed test: no process of it may outlive the session."""
    for pid in tagged(tag, exclude):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what} not within {timeout}s (last: {last!r})")


def listing(call: Callable[..., Any], url: str, headers: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    status, body = call("GET", url + "/v1/runtime/models", headers=headers)
    assert status == 200, body
    return {m["model_name"]: m for m in body["models"]}


def journal(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def listens(port: int) -> List[int]:
    """PIDs with a listening TCP socket on ``port`` (from /proc/net/tcp{,6} and fd links)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            links = {os.readlink(f"/proc/{name}/fd/{fd}") for fd in os.listdir(f"/proc/{name}/fd")}
        except OSError:
            continue
        if any(f"socket:[{inode}]" in links for inode in inodes):
            pids.append(int(name))
    return pids


class EngineProcess:
    """A fake engine started directly (not by Patio), for the control tests."""

    def __init__(self, kind: str, *args: str, dev_mode: bool = True, env: Optional[Mapping[str, str]] = None) -> None:
        import subprocess
        import tempfile

        from support import free_port, wait_http_ok

        self.port = free_port()
        self.journal = Path(tempfile.mkstemp(prefix="engine-journal-", suffix=".jsonl")[1])
        self.journal.write_text("")
        self.log = Path(tempfile.mkstemp(prefix="engine-", suffix=".log")[1])
        module = "vllm.entrypoints.openai.api_server" if kind == "vllm" else "sglang.launch_server"
        flag = "--model" if kind == "vllm" else "--model-path"
        argv = [sys.executable, "-m", module, flag, "/m", "--served-model-name", "m", "--port", str(self.port), *args]
        full = dict(os.environ, PYTHONPATH=str(ENGINES), FAKE_ENGINE_JOURNAL=str(self.journal))
        if dev_mode:
            full["VLLM_SERVER_DEV_MODE"] = "1"
        full.update(env or {})
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http_ok(self.url + "/health", timeout=15)
        self.journal.write_text("")  # the start's /health probes are not what a test reads

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> List[Dict[str, Any]]:
        return [e for e in journal(self.journal) if e["target"] not in ("/health",)]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait(5)


class Rt:
    def __init__(self, patio: RunningPatio, tmp: Path, tag: str, env: Dict[str, str]) -> None:
        self.patio, self.tmp, self.tag, self.env = patio, tmp, tag, env

    @property
    def url(self) -> str:
        return self.patio.url

    def post(self, route: str, body: Any, timeout: float = 60.0) -> Any:
        return http_json("POST", self.url + "/v1/runtime/models/" + route, body, timeout=timeout)

    def activate(self, name: str = "tiny", timeout: float = 60.0, **fields: Any) -> Any:
        body = {"model_name": name, "artifact_url": str(self.tmp / "models" / "tiny"), "engine": "vllm", **fields}
        return self.post("activate", body, timeout)

    def models(self) -> Dict[str, Any]:
        status, body = http_json("GET", self.url + "/v1/runtime/models")
        assert status == 200, body
        return {m["model_name"]: m for m in body["models"]}

    def snapshot(self) -> Dict[str, Any]:
        status, body = http_json("GET", self.url + "/v1/runtime/snapshot")
        assert status == 200, body
        return {m["model_name"]: m for m in body["models"]}

    def ready(self, name: str = "tiny", timeout: float = 20.0) -> Dict[str, Any]:
        return wait_for(
            lambda: (self.models().get(name) or {}).get("ready") and self.models()[name], timeout, f"{name} ready"
        )

    def metrics(self) -> str:
        return http_call("GET", self.url + "/metrics")[2].decode()


def runtime_component(app: Any) -> Any:
    from patio.runtime.component import RuntimeComponent

    return app.find(RuntimeComponent)


def runtime_patios(tmp_path: Path, monkeypatch: Any) -> Iterator[Callable[..., Rt]]:
    """The body of a test module's ``rt_factory`` fixture: in-process Patios with the runtime on,
    stopped at the end, then the check that no process of the test is left."""
    tag = engine_environ(monkeypatch)
    started: List[RunningPatio] = []

    def make(**extra: str) -> Rt:
        env = runtime_env(tmp_path, **extra)
        patio = RunningPatio(make_settings(env=env)).__enter__()
        started.append(patio)
        return Rt(patio, tmp_path, tag, env)

    try:
        yield make
        for patio in started:
            patio.stop()
        left = strays(tag)
        assert not left, f"processes left behind: {left}"
    finally:
        kill_tagged(tag)
