"""A fleet against one real smg: how fast a restarted router relearns every worker, and how
hard the fleet hits it meanwhile, with Patio's heartbeat jitter and without it.

    .venv/bin/python bench/bench_topology.py [--patios 50] [--interval 5]

For each mode (jitter 0.2, the default; jitter 0, every beat exactly on the interval):
  1. N fake engines (one thread each, /health 503) and N Patio processes (the real pyz),
     all started together, then every engine flips healthy at once: the fleet registers
     in the same instant, as pods started together do.
  2. Two intervals of steady state.
  3. smg is killed (SIGKILL: it forgets every worker) and started again on the same port.
  4. The router's own Prometheus counters (smg_http_requests_total, smg_worker_pool_size)
     are read every 50 ms until all N workers are listed again: the time that takes and
     the request rate in 100 ms bins (peak, and the mean over the storm).
  5. SIGTERM to every Patio; each removes its worker (checked: the router ends empty).

The router venv is .venv-peers/smg-1.13.0 (built by tests/run.sh).  Prints a table and the
ratio jitter/no-jitter of peak rate and of time to relearn.

    .venv/bin/python bench/bench_topology.py --hostile BEFORE.pyz [AFTER.pyz] [--only NAME,...]

A hostile router instead (tests/peers/router_attacks.py, the table test_topology_hostile.py
asserts on): for each pyz and each attack, Patio registers with a scripted router that then
answers garbage, hangs after the headers, sends 1 GiB, 500s, drips a byte a second, or flips
membership or worker_type at every beat, for 4 s.  Printed per attack and pyz: /ready probes
that failed and their p50/p99/max, RSS and threads before and at peak, router calls, POSTs and
DELETEs during the attack, bytes the router pushed per call, and whether Patio registered
again and exited 0 afterwards.

    .venv/bin/python bench/bench_topology.py --slow-router BEFORE_TREE [AFTER_TREE]

One heartbeat against a router that answers every call in 0.6 of the router timeout (1 s),
while this worker is not registered yet: look up, POST (no id in the answer), find the id.
Each tree is a checkout whose ``patio`` package is imported (``git archive`` a commit to get
one); printed: how long the first beat took, its calls, its result.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
SMG = ROOT / ".venv-peers" / "smg-1.13.0"
PYZ = ROOT / "dist" / "patio.pyz"
POLL = 0.05
BIN = 0.1


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Engines:
    """N tiny engines in this process: /health answers ``status`` (flipped for all at once)."""

    def __init__(self, n: int) -> None:
        self.status = 503
        engines = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/health":
                    code, body = engines.status, b""
                elif self.path == "/v1/models":
                    code, body = 200, json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
                else:
                    code, body = 404, b"{}"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(n)]
        for server in self.servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()

    @property
    def ports(self) -> List[int]:
        return [s.server_address[1] for s in self.servers]

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


class Smg:
    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: Optional[subprocess.Popen] = None
        self.metrics_port = 0

    def start(self) -> float:
        self.metrics_port = free_port()
        argv = [str(SMG / "bin" / "smg"), "launch", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(self.metrics_port), "--log-level", "warn"]
        argv += ["--health-check-interval-secs", "5", "--worker-startup-timeout-secs", "30"]
        env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9")
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1).read()
                return time.monotonic()
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("smg did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def counters(self) -> Tuple[float, float]:
        """(requests to the worker API so far, workers listed)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).read().decode()
        requests = sum(
            float(v) for v in re.findall(r'^smg_http_requests_total\{[^}]*path="/workers[^"]*"\} (\S+)$', text, re.M)
        )
        pool = sum(float(v) for v in re.findall(r"^smg_worker_pool_size\{[^}]*\} (\S+)$", text, re.M))
        return requests, pool

    def listed(self) -> Tuple[int, int]:
        """(workers listed, of which still routable: smg keeps a removed one "draining" for 5 s)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/workers", timeout=5) as answer:
            workers = json.loads(answer.read())["workers"]
        return len(workers), sum(1 for w in workers if w.get("status") != "draining")


def start_fleet(
    n: int, router: Smg, engines: Engines, interval: float, jitter: float
) -> Tuple[List[subprocess.Popen], List[int]]:
    procs, ports = [], []
    logs = tempfile.mkdtemp(prefix="patio-bench-topology-")
    for i, port in enumerate(engines.ports):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PATIO_STATE_DIR": tempfile.mkdtemp(prefix="patio-state-"),
            "TOPO_TYPE": "SGLang",
            "SGL_ROUTER_ENDPOINT": f"http://127.0.0.1:{router.port}",
            "POD_IP": "127.0.0.1",
            "INFERENCE_ENGINE_ENDPOINT": f"http://127.0.0.1:{port}",
            "HEARTBEAT_INTERVAL": str(interval),
            "PATIO_HEARTBEAT_JITTER": str(jitter),
            "PATIO_ENGINE_HEALTH_INTERVAL": "0.2",
            "PATIO_LOG_LEVEL": "WARNING",
        }
        ports.append(free_port())
        argv = [sys.executable, "-I", "-S", str(PYZ), "--host", "127.0.0.1", "--port", str(ports[-1])]
        argv += ["--instance-info", json.dumps({"data": {"port": port}}), "--scrape-engine-metrics", "false"]
        with open(os.path.join(logs, f"patio-{i}.log"), "wb") as log:
            procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs, ports


def wait_serving(ports: List[int], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Patio on {port} did not start") from None
                time.sleep(0.05)


def wait_listed(router: Smg, n: int, timeout: float) -> Tuple[float, List[float]]:
    """Seconds until ``n`` workers are listed, and requests per BIN since the call."""
    began = time.monotonic()
    samples: List[Tuple[float, float]] = []
    first_requests: Optional[float] = None
    done_at: Optional[float] = None
    while time.monotonic() - began < timeout:
        try:
            requests, pool = router.counters()
        except OSError:
            time.sleep(POLL)
            continue
        now = time.monotonic() - began
        first_requests = requests if first_requests is None else first_requests
        samples.append((now, requests - first_requests))
        if pool >= n and done_at is None:
            done_at = now
            break
        time.sleep(POLL)
    bins: Dict[int, float] = {}
    previous = 0.0
    for at, total in samples:
        bins[int(at / BIN)] = bins.get(int(at / BIN), 0.0) + total - previous
        previous = total
    rates = [bins.get(i, 0.0) / BIN for i in range(max(bins) + 1)] if bins else []
    return (done_at if done_at is not None else float("nan")), rates


def run_mode(n: int, interval: float, jitter: float) -> Dict[str, float]:
    engines = Engines(n)
    router = Smg(free_port())
    router.start()
    procs, ports = start_fleet(n, router, engines, interval, jitter)
    try:
        wait_serving(ports)  # every Patio is up and waiting for its engine
        time.sleep(1.0)
        engines.status = 200  # the whole fleet's engines turn healthy at once
        registered_in, first_rates = wait_listed(router, n, timeout=60)
        time.sleep(2 * interval)  # steady state
        steady_before, _ = router.counters()
        time.sleep(interval)
        steady_after, _ = router.counters()
        router.kill()
        router.start()
        relearned_in, rates = wait_listed(router, n, timeout=6 * interval + 30)
        storm = rates or [0.0]
        result = {
            "initial_registration_s": registered_in,
            "first_peak_rps": max(first_rates or [0.0]),
            "steady_rps": (steady_after - steady_before) / interval,
            "relearn_all_s": relearned_in,
            "storm_peak_rps": max(storm),
            "storm_mean_rps": sum(storm) / len(storm),
            "storm_requests": sum(storm) * BIN,
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(30) for proc in procs]
        routable = router.listed()[1]  # every Patio has exited: none may still be in rotation
        deadline = time.monotonic() + 15
        while router.listed()[0] and time.monotonic() < deadline:  # smg forgets after its drain
            time.sleep(0.2)
        left = router.listed()[0]
        router.kill()
        engines.close()
    result["exit_0"] = float(sum(1 for c in codes if c == 0))
    result["routable_at_exit"] = float(routable)
    result["listed_after_drain"] = float(left)
    return result


def hostile(pyzs: List[str], only: Optional[str]) -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from peers.router_attacks import ATTACKS, run_attack

    attacks = [a for a in ATTACKS if not only or a.name in only.split(",")]
    columns = ("failed/probes", "p50 ms", "p99 ms", "max ms", "RSS MiB", "threads", "calls", "POST", "DELETE")
    columns += ("MiB/call", "back", "exit")
    print(f"{'attack':30}{'pyz':>8}" + "".join(f"{c:>14}" for c in columns))
    for attack in attacks:
        for index, pyz in enumerate(pyzs):
            out = run_attack(Path(pyz), attack, free_port())
            cells = (
                f"{out.failed_probes}/{out.probes}",
                f"{out.ready_p50_ms:.1f}",
                f"{out.ready_p99_ms:.1f}",
                f"{out.ready_max_ms:.1f}",
                f"{out.rss_base_mb:.1f}->{out.rss_peak_mb:.1f}",
                f"{out.threads_base}->{out.threads_peak}",
                str(out.calls),
                str(out.posts),
                str(out.deletes),
                f"{out.bytes_sent_per_call / 2**20:.1f}",
                "yes" if out.recovered else "no",
                str(out.exit_code),
            )
            label = ("before", "after")[index] if len(pyzs) == 2 else Path(pyz).name
            print(f"{attack.name:30}{label:>8}" + "".join(f"{c:>14}" for c in cells), flush=True)
            print(f"{'':38}last error: {out.last_error}", flush=True)
    return 0


SLOW_ROUTER_BEAT = """
import json, sys, time
sys.path.insert(0, sys.argv[2])
from peers.scripted_router import ScriptedRouter, Slow
from patio.topology.heartbeat import Heartbeat
from patio.topology.router_client import RouterClient
from patio.topology.settings import TopologySettings

router = ScriptedRouter({
    ("GET", "/workers"): Slow(0.6, 200, {"workers": []}),
    ("POST", "/workers"): Slow(0.6, 202, {"status": "accepted"}),
})
settings = TopologySettings(enabled=True, topo_type="sglang", router_url=router.url, worker_url="http://127.0.0.1:9",
                            heartbeat_interval=5.0, request_timeout=1.0, heartbeat_jitter=0.0)
results = []
beat = Heartbeat(settings, RouterClient(settings), lambda: True,
                 on_heartbeat=lambda r: results.append((time.monotonic(), r)))
beat.start()
while not results:
    time.sleep(0.01)
first = router.log[0].at
calls = [f"{c.method} {c.path}" for c in router.log if c.at < results[0][0]]
print(json.dumps({"first_beat_s": round(results[0][0] - first, 3), "calls": calls, "result": results[0][1],
                  "error": beat.last_error}))
beat.stop.set()
router.stop()
"""


def slow_router(trees: List[str]) -> int:
    for tree in trees:
        done = subprocess.run(
            [sys.executable, "-c", SLOW_ROUTER_BEAT, tree, str(ROOT / "tests")],
            env=dict(os.environ, PYTHONPATH=tree),
            cwd=tree,  # with -c, the working directory comes first on sys.path
            capture_output=True,
            text=True,
            timeout=60,
        )
        print(f"{tree}: {done.stdout.strip() or done.stderr.strip()[-800:]}", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patios", type=int, default=50)
    parser.add_argument("--interval", type=float, default=5.0, help="HEARTBEAT_INTERVAL of every Patio")
    parser.add_argument("--hostile", nargs="+", metavar="PYZ", help="run the hostile-router attacks on these pyz")
    parser.add_argument("--only", help="with --hostile: comma-separated attack names")
    parser.add_argument("--slow-router", nargs="+", metavar="TREE", help="one beat against slow answers, per tree")
    args = parser.parse_args()
    if args.hostile:
        return hostile(args.hostile, args.only)
    if args.slow_router:
        return slow_router(args.slow_router)
    if not (SMG / ".patio-stamp").exists():
        print(f"{SMG} is missing: run `bash tests/run.sh` once (it builds the router venvs)", file=sys.stderr)
        return 2
    if not PYZ.exists():
        subprocess.run(["bash", str(ROOT / "build_pyz.sh")], check=True, capture_output=True)
    print(f"{args.patios} Patio processes (dist/patio.pyz) against smg 1.13.0, HEARTBEAT_INTERVAL={args.interval}s")
    results = {}
    for label, jitter in (("jitter 0.2", 0.2), ("no jitter", 0.0)):
        results[label] = run_mode(args.patios, args.interval, jitter)
        print(f"  {label}: " + ", ".join(f"{k}={v:.2f}" for k, v in results[label].items()), flush=True)
    j, nj = results["jitter 0.2"], results["no jitter"]
    print()
    print(f"{'':28}{'jitter 0.2':>12}{'no jitter':>12}{'ratio':>8}")
    keys = ("relearn_all_s", "storm_peak_rps", "storm_mean_rps", "storm_requests", "steady_rps")
    keys += ("initial_registration_s",)
    for key in keys:
        ratio = j[key] / nj[key] if nj[key] else float("nan")
        print(f"{key:28}{j[key]:12.2f}{nj[key]:12.2f}{ratio:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
