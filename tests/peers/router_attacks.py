"""A hostile router against a running Patio, and what each attack costs it (tests and bench).

Patio runs as the real pyz process (``python -I -S PYZ``) in front of a fake engine and
registers with a scripted router (tests/peers/scripted_router.py, a real socket server in
a thread of this process).  Once registered, a kubelet-like prober asks ``GET /ready`` every
50 ms (1 s timeout, the kubelet's default) and Patio's RSS and threads are sampled from
/proc; then the router turns hostile for ``seconds``: garbage, a head then silence, 1 GiB
bodies, 500s, an answer dripped a byte a second, membership or worker_type flipping at every
beat.  Afterwards the router behaves again: Patio must register again by itself, and exit 0
on SIGTERM after removing the worker by its id.

    tests/test_topology_hostile.py   asserts on each Outcome
    bench/bench_topology.py --hostile BEFORE.pyz AFTER.pyz   prints them side by side
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from fakes.engine import FakeEngine

from peers.polling import wait_for
from peers.scripted_router import Action, Cycle, Drip, HeadThenHang, Huge, ScriptedRouter

WORKER_ID = "d68605b2-bb4f-405e-a020-e10688bffd44"  # a UUIDv4: the router reads as sglang-router
INTERVAL = 0.3  # HEARTBEAT_INTERVAL: many beats in a short attack
ROUTER_TIMEOUT = 1.0  # SGL_ROUTER_TIMEOUT: a drip of a byte a second outlives it at once
ATTACK_SECONDS = 4.0
PROBE_EVERY = 0.05
PROBE_TIMEOUT = 1.0  # the kubelet's default timeoutSeconds
SAMPLE_EVERY = 0.1

Rules = Dict[Tuple[str, str], Action]


def entry(url: str, **fields: Any) -> Dict[str, Any]:
    return {"id": WORKER_ID, "url": url, "worker_type": "regular", "is_healthy": True, **fields}


def good_rules(url: str) -> Rules:
    """An sglang-router 0.3 that knows this worker (answers as in ../shared/reference/sglang-router.md)."""
    return {
        ("POST", "/workers"): (202, {"status": "accepted", "worker_id": WORKER_ID, "url": url}),
        ("GET", "/workers"): (200, {"workers": [entry(url)], "total": 1}),
        ("GET", "/workers/"): (200, entry(url)),
        ("DELETE", "/workers/"): (202, {"status": "accepted", "worker_id": WORKER_ID}),
    }


def everywhere(action: Action) -> Callable[[str], Rules]:
    """Every call a heartbeat makes (lookups, the listing, a registration) gets ``action``."""
    return lambda url: {("GET", "/workers"): action, ("GET", "/workers/"): action, ("POST", "/workers"): action}


@dataclass(frozen=True)
class Attack:
    name: str
    rules: Callable[[str], Rules]
    error: Optional[str]  # what /v1/topology's last heartbeat error says during the attack
    max_deletes: int = 0  # DELETEs Patio may send during the attack (it must not flap its worker)


ATTACKS = [
    Attack("answers_garbage", everywhere("garbage"), "malformed"),
    Attack("hangs_after_the_headers", everywhere(HeadThenHang(200, 100)), "stalled past"),
    Attack("one_gib_body", everywhere(Huge(1 << 30)), "larger than"),
    Attack("one_gib_body_without_length", everywhere(Huge(1 << 30, declared=False)), "larger than"),
    Attack("answers_500", everywhere((500, {"error": "internal error"})), "answered 500"),
    Attack("drips_a_byte_a_second", lambda url: everywhere(Drip(1.0, 200, entry(url)))(url), "stalled past"),
    Attack(
        "membership_flips_every_beat",
        lambda url: {("GET", "/workers/"): Cycle([(200, entry(url)), (404, {"code": "WORKER_NOT_FOUND"})])},
        None,
    ),
    Attack(
        "worker_type_flips_every_beat",
        lambda url: {("GET", "/workers/"): Cycle([(200, entry(url)), (200, entry(url, worker_type="decode"))])},
        None,
        # One replace (DELETE then POST) is how Patio repairs a stale registration; another
        # only after REPLACE_HOLD_OFF_BEATS intervals (3 s here), never at every beat.
        max_deletes=2,
    ),
]
BY_NAME = {a.name: a for a in ATTACKS}


@dataclass
class Outcome:
    attack: str
    probes: int = 0
    failed_probes: int = 0  # not 200, or no answer within PROBE_TIMEOUT
    ready_p50_ms: float = 0.0
    ready_p99_ms: float = 0.0
    ready_max_ms: float = 0.0
    rss_base_mb: float = 0.0
    rss_peak_mb: float = 0.0
    threads_base: int = 0
    threads_peak: int = 0
    calls: int = 0  # router calls during the attack
    posts: int = 0
    deletes: int = 0
    bytes_sent_per_call: float = 0.0  # of Huge bodies: what Patio let the router push
    last_error: Optional[str] = None
    alive: bool = True
    recovered: bool = False
    exit_code: Optional[int] = None
    log: str = ""
    statuses: List[int] = field(default_factory=list)


def proc_status(pid: int) -> Tuple[float, int]:
    """(RSS in MiB, threads) from /proc."""
    fields: Dict[str, str] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


def get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.loads(answer.read())


class Prober(threading.Thread):
    """GET /ready on a fresh connection every PROBE_EVERY, as a kubelet does."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stopped = threading.Event()
        self.samples: List[Tuple[int, float]] = []  # (status or 0, seconds)

    def run(self) -> None:
        while not self.stopped.wait(PROBE_EVERY):
            began = time.monotonic()
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=PROBE_TIMEOUT) as answer:
                    answer.read()
                    status = answer.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                status = 0
            self.samples.append((status, time.monotonic() - began))


def _quantile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else 0.0


def launch(pyz: Path, engine: FakeEngine, router_url: str, port: int, log: Any) -> subprocess.Popen:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PATIO_STATE_DIR": tempfile.mkdtemp(prefix="patio-state-"),
        "TOPO_TYPE": "SGLang",
        "SGL_ROUTER_ENDPOINT": router_url,
        "POD_IP": "127.0.0.1",
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "HEARTBEAT_INTERVAL": str(INTERVAL),
        "SGL_ROUTER_TIMEOUT": str(ROUTER_TIMEOUT),
        "PATIO_LOG_LEVEL": "INFO",
    }
    argv = [sys.executable, "-I", "-S", str(pyz), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--instance-info", json.dumps({"data": {"port": engine.port}}), "--scrape-engine-metrics", "false"]
    argv += ["--shutdown-timeout", "8", "--drain-timeout", "1"]
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def run_attack(pyz: Path, attack: Attack, port: int, seconds: float = ATTACK_SECONDS) -> Outcome:
    out = Outcome(attack.name)
    engine = FakeEngine("sglang")
    router = ScriptedRouter(good_rules(engine.url))
    log_path = Path(tempfile.mkstemp(prefix="patio-hostile-router-", suffix=".log")[1])
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = launch(pyz, engine, router.url, port, log)
        prober = Prober(url)
        try:
            if not wait_for(lambda: get_json(url + "/v1/topology")["registered"], 20):
                raise RuntimeError(f"Patio never registered with the scripted router:\n{log_path.read_text()}")
            prober.start()
            time.sleep(1.0)  # the pools and the probe path warmed up: the baseline
            out.rss_base_mb, out.threads_base = proc_status(proc.pid)
            out.rss_peak_mb, out.threads_peak = out.rss_base_mb, out.threads_base
            first_call, first_probe, sent_before = len(router.log), len(prober.samples), router.sent
            router.rules = {**good_rules(engine.url), **attack.rules(engine.url)}
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                rss, threads = proc_status(proc.pid)
                out.rss_peak_mb, out.threads_peak = max(out.rss_peak_mb, rss), max(out.threads_peak, threads)
                time.sleep(SAMPLE_EVERY)
            calls = router.log[first_call:]
            probes = prober.samples[first_probe:]
            out.last_error = get_json(url + "/v1/topology").get("last_heartbeat_error")
            router.rules = good_rules(engine.url)
            prober.stopped.set()
            prober.join(5)
            out.calls = len(calls)
            out.posts = sum(1 for c in calls if c.method == "POST")
            out.deletes = sum(1 for c in calls if c.method == "DELETE")
            out.bytes_sent_per_call = (router.sent - sent_before) / max(len(calls), 1)
            out.statuses = [s for s, _ in probes]
            out.probes = len(probes)
            out.failed_probes = sum(1 for s, _ in probes if s != 200)
            times = [t * 1000 for _, t in probes]
            out.ready_p50_ms, out.ready_p99_ms = _quantile(times, 0.5), _quantile(times, 0.99)
            out.ready_max_ms = max(times or [0.0])
            out.alive = proc.poll() is None

            def healthy() -> bool:
                topology = get_json(url + "/v1/topology")
                return bool(topology["registered"] and not topology["last_heartbeat_error"])

            out.recovered = bool(wait_for(healthy, 10))
            # The router lets go after the DELETE (a lookup answers 404): removal confirmed.
            router.rules[("GET", "/workers/")] = (404, {"code": "WORKER_NOT_FOUND"})
            proc.send_signal(signal.SIGTERM)
            out.exit_code = proc.wait(20)
        finally:
            prober.stopped.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            router.stop()
            engine.stop()
    out.log = log_path.read_text(errors="replace")
    return out
