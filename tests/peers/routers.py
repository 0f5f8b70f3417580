"""The three router generations in use today, started from their PyPI builds on 127.0.0.1.

Each lives in its own virtualenv under ``.venv-peers/`` (they conflict: sglang-router
0.3.2 installs an ``smg`` script of its own), built by ``tests/run.sh``.  A missing
venv FAILS the test with the command to run, never skips: a router test that
cannot run must not look like a pass.

Start commands follow ../shared/reference/sglang-router.md; ``HF_ENDPOINT`` points
nowhere so a router never reaches for a tokenizer on the internet.
"""

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote

import pytest
from support import ROOT, free_port

PEERS = ROOT / ".venv-peers"
# Written by tests/run.sh after a complete install; a venv without it is half-built.
STAMP = ".patio-stamp"


@dataclass(frozen=True)
class Generation:
    name: str  # also the venv directory under .venv-peers/
    spec: str  # the pip requirement (tests/run.sh installs exactly this)
    command: Tuple[str, ...]  # relative to the venv
    log_level: str
    topo_type: str  # what Patio's TOPO_TYPE must say for it
    detected: str  # what Patio should detect from its answers
    pd_flags: Tuple[str, ...]  # how to start it so it accepts prefill/decode registrations
    pd_detected: str
    control_plane_auth: bool  # does --api-key guard /workers?


GENERATIONS: Sequence[Generation] = (
    Generation(
        "sglang-router-0.3.2",
        "sglang-router==0.3.2",
        ("bin/python", "-m", "sglang_router.launch_router"),
        "warn",
        "SGLang",
        "sglang-router",
        ("--pd-disaggregation",),
        "sglang-router",
        True,
    ),
    Generation(
        "smg-1.13.0",
        "smg==1.13.0",
        ("bin/smg", "launch"),
        "warn",
        "SGLang",
        "smg",
        ("--pd-disaggregation",),
        "smg",
        True,
    ),
    # vllm-router's --pd-disaggregation needs static --prefill/--decode lists and refuses
    # POST /workers ("PD router requires specific add_prefill_server..."); its dynamic
    # prefill/decode path is --enable-igw (observed on 0.1.17; src/server.rs create_worker).
    # Its --api-key is the key it sends to *workers* (vllm_router/router.py), not a guard.
    Generation(
        "vllm-router-0.1.17",
        "vllm-router==0.1.17",
        ("bin/vllm-router",),
        "warning",
        "vLLM",
        "vllm-router",
        ("--enable-igw",),
        "vllm-router-igw",
        False,
    ),
)
BY_NAME = {g.name: g for g in GENERATIONS}


def venv(generation: Generation) -> Path:
    path = PEERS / generation.name
    stamp = path / STAMP
    if not stamp.exists() or stamp.read_text().strip() != generation.spec:
        pytest.fail(
            f"router venv {path} is missing or half-installed (no {STAMP} for {generation.spec}): "
            "run `bash tests/run.sh` once; it builds one venv per router generation under .venv-peers/",
            pytrace=False,
        )
    return path


def _call(method: str, url: str, body: Any = None, key: Optional[str] = None, timeout: float = 5.0) -> Tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            raw = answer.read()
            status = answer.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


class RealRouter:
    """One router process; ``restart()`` kills it (a crash: it forgets every worker) and starts it again."""

    def __init__(self, generation: Generation, *extra: str, port: Optional[int] = None, start: bool = True) -> None:
        self.generation = generation
        self.home = venv(generation)
        self.extra = extra
        self.port = port or free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"patio-router-{generation.name}-{self.port}.log"
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        argv = [
            str(self.home / self.generation.command[0]),
            *self.generation.command[1:],
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--prometheus-host",
            "127.0.0.1",
            "--prometheus-port",
            str(free_port()),
            "--health-check-interval-secs",
            "1",
            "--health-failure-threshold",
            "2",
            "--health-success-threshold",
            "1",
            "--health-check-timeout-secs",
            "1",
            "--worker-startup-timeout-secs",
            "10",
            "--log-level",
            self.generation.log_level,
            *self.extra,
        ]
        env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", NO_PROXY="*")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.generation.name} exited {self.proc.returncode}; log:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.generation.name} did not answer /health within {timeout}s; log:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)  # smg drains for ~5 s on SIGTERM; tests need not wait for that
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()

    # -- the router's own API, as an operator would call it ---------------------------------
    def workers(self, key: Optional[str] = None) -> List[Dict[str, Any]]:
        status, body = _call("GET", self.url + "/workers", key=key)
        assert status == 200, (status, body)
        return list(body["workers"])

    def listed(self, url: str, key: Optional[str] = None) -> Optional[Dict[str, Any]]:
        for worker in self.workers(key):
            if worker.get("url") == url:
                return worker
        return None

    def routable(self, url: str, key: Optional[str] = None) -> Optional[Dict[str, Any]]:
        """The entry while the router may still send it new requests.  smg keeps a removed
        worker listed as "draining" for --drain-settle-secs (default 5) while in-flight
        requests finish, then forgets it (smg main.rs, drain_settle_secs)."""
        entry = self.listed(url, key)
        return entry if entry is not None and entry.get("status") != "draining" else None

    def add(self, url: str, key: Optional[str] = None, **fields: Any) -> Tuple[int, Any]:
        return _call("POST", self.url + "/workers", {"url": url, **fields}, key=key)

    def remove(self, url: str) -> None:
        entry = self.listed(url)
        if entry is None:
            return
        target = entry.get("id") if self.generation.topo_type == "SGLang" else quote(url, safe="")
        _call("DELETE", f"{self.url}/workers/{target}")
