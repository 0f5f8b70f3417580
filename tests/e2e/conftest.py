"""Fixtures of the end-to-end tier: a real vLLM, Patio from dist/patio.pyz, a moto S3 server.

Every process is started in its own process group and stopped by PID (SIGTERM,
then SIGKILL) whatever the test outcome.  Outside tests/e2e/run.sh (which sets
PATIO_E2E_VLLM_VENV) the tier is skipped with that reason; inside, every
failure is a failure.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from support import PEERS_ALLOWED, free_port  # noqa: E402

VENV = os.environ.get("PATIO_E2E_VLLM_VENV")
ASSETS = Path(os.environ.get("PATIO_E2E_ASSETS", "/nonexistent"))
WORK = ROOT / "tests" / "e2e" / ".work"
TIMINGS = WORK / "timings.json"
VLLM_READY_TIMEOUT = 240


def pytest_collection_modifyitems(config, items):
    if VENV:
        return
    skip = pytest.mark.skip(reason="end-to-end tier: run it with tests/e2e/run.sh (sets up vLLM)")
    for item in items:
        item.add_marker(skip)


def pytest_sessionstart(session):
    # Each run starts a fresh timings file, so a failed run never reports numbers of an older one.
    if VENV and TIMINGS.exists():
        TIMINGS.unlink()


def pytest_terminal_summary(terminalreporter):
    if TIMINGS.exists() and VENV:
        terminalreporter.write_sep("-", f"timings ({TIMINGS.relative_to(ROOT)})")
        for key, value in sorted(json.loads(TIMINGS.read_text()).items()):
            terminalreporter.write_line(f"{key}: {value}")


def record_timing(key, value):
    WORK.mkdir(parents=True, exist_ok=True)
    data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    data[key] = value
    TIMINGS.write_text(json.dumps(data, indent=1, sort_keys=True))


def get(url, timeout=5.0, headers=None):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post_json(url, body, headers=None, timeout=60.0):
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(url, timeout, proc=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = Path(log).read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"process exited ({proc.returncode}) before {url} answered:\n{tail}")
        try:
            if get(url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready within {timeout}s")


def stop_group(proc, grace=15.0):
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class Vllm:
    """A real vLLM OpenAI server on 127.0.0.1 (CPU), restartable on the same port."""

    def __init__(self, *extra, env=None):
        self.port = free_port()
        self.extra = list(extra)
        self.env = dict(env or {})  # e.g. VLLM_PLUGINS for the filesystem LoRA resolver
        self.proc = None
        self.log = Path(tempfile.mkstemp(prefix="vllm-", suffix=".log")[1])
        self.ready_seconds = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        env = dict(
            os.environ,
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
            VLLM_CPU_KVCACHE_SPACE="1",
            VLLM_HOST_IP="127.0.0.1",
            HF_HUB_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            **self.env,
        )
        argv = [
            f"{VENV}/bin/python",
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(ASSETS / "model"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--enable-lora",
            "--max-lora-rank",
            "8",
            "--max-loras",
            "2",
            "--max-model-len",
            "128",
            "--max-num-seqs",
            "4",
            *self.extra,
        ]
        started = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(self.url + "/health", VLLM_READY_TIMEOUT, self.proc, self.log)
        self.ready_seconds = round(time.monotonic() - started, 1)
        return self

    def stop(self):
        if self.proc is not None:
            stop_group(self.proc)

    def restart(self):
        self.stop()
        self.start()


class Patio:
    """Patio from dist/patio.pyz as a real process in front of ``engine_url``."""

    def __init__(self, engine_url, state_dir, adapter_dir, env=None):
        self.port = free_port()
        self.log = Path(tempfile.mkstemp(prefix="patio-", suffix=".log")[1])
        full = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "INFERENCE_ENGINE": "vllm",
            "INFERENCE_ENGINE_ENDPOINT": engine_url,
            "PATIO_STATE_DIR": str(state_dir),
            "PATIO_ADAPTER_DIR": str(adapter_dir),
            "PATIO_LORA_RECONCILE_INTERVAL": "2",
            **PEERS_ALLOWED,  # moto and the fake hubs listen on loopback, which downloads may not reach unasked
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
            "--log-level",
            "INFO",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(self.url + "/health", 20, self.proc, self.log)
        except BaseException:
            # The factory never saw this instance, so its finalizer cannot stop it.
            stop_group(self.proc)
            raise

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def post(self, path, body, headers=None):
        status, raw = post_json(self.url + path, body, headers)
        return status, json.loads(raw) if raw else None

    def get_json(self, path):
        status, raw = get(self.url + path)
        return status, json.loads(raw)

    def adapters(self):
        return {a["name"]: a for a in self.get_json("/v1/lora_adapters")[1]["data"]}

    def stop(self):
        stop_group(self.proc)
        return self.proc.returncode


@pytest.fixture(scope="session")
def assets():
    for part in ("model", "adapters/a", "adapters/b"):
        assert (ASSETS / part).is_dir(), f"missing {ASSETS / part}: run tests/e2e/run.sh"
    return ASSETS


@pytest.fixture(scope="module")
def vllm(assets):
    server = Vllm()
    try:
        server.start()
        record_timing("vllm_ready_seconds", server.ready_seconds)
        yield server
    finally:
        server.stop()


@pytest.fixture()
def patio_factory(tmp_path):
    started = []

    def make(engine_url, env=None, state_dir=None):
        patio = Patio(engine_url, state_dir or tmp_path / "state", tmp_path / "adapters", env)
        started.append(patio)
        return patio

    yield make
    for patio in started:
        patio.stop()


@pytest.fixture()
def moto_s3():
    port = free_port()
    binary = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", 30, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc)
