"""A soak: Patio as a real process against real peers, everything at once, for a long while.

    .venv/bin/python bench/soak.py [--minutes 30] [--router vllm-router-0.1.17]

CI runs ``--minutes 2`` (tests/test_soak.py), with the same rule; the bench runs 30.

The peers, each a real process or real sockets: the fake vLLM engine (tests/fakes/engine.py) and
a file server for adapter downloads (tests/artifacts_fakes.py), in this process; Debian's
redis-server and a ZMQ publisher with vLLM's wire behaviour (tests/kvevents_peers.py); a router
from its PyPI build in .venv-peers/ (tests/peers/routers.py; vllm-router by default, as the
engine is vLLM).  Patio is the zipapp (dist/patio.pyz, built first), as a pod runs it.

The load, concurrently for the whole run:
- kubelet-like probes: ``/healthz`` every 100 ms and ``/ready`` every second, each on a fresh
  connection (2 s timeout);
- Prometheus-like scrapes: ``/metrics`` every second, every other one gzipped, of a ~1 MB engine
  payload whose values change every 2 s;
- LoRA churn: an adapter downloaded from the file server, loaded, then unloaded, about every
  second, three names in turn, beside two adapters loaded at the start that must stay;
- KV events: 50 batches/s from the publisher, each storing 4 blocks and removing those older than
  the last 400 (Redis holds a window of the pod's blocks, never a growing set);
- the adapters file, mounted as a ConfigMap, switched between two sets every 10 s by the
  kubelet's ``..data`` symlink swap;
- the router killed and started again every sixth of the run (every 5 min in 30 minutes).

Every sixtieth of the run (30 s in 30 minutes) Patio's open fds, threads and RSS are sampled from
/proc, each the least of five reads over half a second (what stays, not a connection that is
closing), and printed with what the load did so far.

Flat after warm-up: the first half of the run is warm-up; over the second half, each series'
least-squares slope times the length of that half (the drift its trend amounts to over the
window) must stay within DRIFT_BOUNDS (3 fds, 2 threads, 4 MB).  And at the end: no probe failed,
every router restart was followed by Patio's registration again, the engine holds the adapters
file's last set and the adapters that must stay (and no churned one), Redis holds exactly the
publisher's window, promtool accepts every sampled scrape, Patio logged no traceback, exited 0 on
SIGTERM, and left nothing of the pod in Redis.  Exit status 0 when all hold, 1 otherwise.
"""

import argparse
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# The tests' peers and harness (which imports patio from the checkout).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from artifacts_fakes import FileServer
from configmap_support import ConfigMapMount
from fakes.engine import FakeEngine
from kvevents_peers import (
    MODEL,
    POD,
    Expected,
    Publisher,
    RedisServer,
    batch,
    redis_cli_scan,
    redis_state,
    removed,
    stored,
)
from peers.routers import BY_NAME, RealRouter
from support import PatioProcess, http_call, http_json

# Drift over the judged half (slope x window) that still counts as flat.  A leak of one fd per
# router restart, per LoRA round or per thousand scrapes passes 3 within a 30-minute run's second half;
# RSS noise (a render alive or not) is about 1 MB, its trend's error over 30 samples ~0.6 MB.
DRIFT_BOUNDS = {"fds": 3.0, "threads": 2.0, "rss_mb": 4.0}
SAMPLES = 60  # per run: the sampling interval is the run's length / SAMPLES
ROUTER_RESTARTS = 5  # per run, evenly spaced (every 5 min in 30 minutes)
READS_PER_SAMPLE, READ_GAP = 5, 0.1

PROBE_EVERY, READY_EVERY, SCRAPE_EVERY, LORA_EVERY = 0.1, 1.0, 1.0, 1.0
PAYLOAD_EVERY, SWAP_EVERY = 2.0, 10.0
KV_BATCHES_PER_SECOND, KV_BLOCKS_PER_BATCH, KV_WINDOW = 50, 4, 400
PROBE_TIMEOUT = 2.0
RELEARN_TIMEOUT = 20.0  # router back -> worker listed again (heartbeat 1 s, plus the router's own checks)
HEARTBEAT = 1.0
MAX_ERRORS_KEPT = 20

KEEP = {"keep-a": "/models/keep-a", "keep-b": "/models/keep-b"}
FILE_SETS = ({"file-a": "/m/a1", "file-b": "/m/b1"}, {"file-a": "/m/a2", "file-c": "/m/c1"})
CHURN = 3


def engine_payload(version: int) -> bytes:
    head = b"# HELP vllm:request_latency x\n# TYPE vllm:request_latency histogram\n"
    line = b'vllm:request_latency_bucket{engine="0",le="%d.5",model_name="meta-llama/Llama-3.1-8B-Instruct"} %d\n'
    return head + b"".join(line % (i, version + i) for i in range(11000))  # ~1.1 MB


def adapters_file(adapters: Dict[str, str]) -> bytes:
    return json.dumps({"adapters": [{"name": n, "source": s} for n, s in adapters.items()]}).encode()


# -- sampling and the flatness rule --------------------------------------------------------------
def _read(pid: int) -> Dict[str, float]:
    with open(f"/proc/{pid}/status") as handle:
        status = dict(line.split(":", 1) for line in handle if ":" in line)
    return {
        "fds": float(len(os.listdir(f"/proc/{pid}/fd"))),
        "threads": float(status["Threads"].strip()),
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
    }


def sample(pid: int) -> Dict[str, float]:
    """The least of a few reads: what stays, not a probe connection mid-close."""
    reads = []
    for index in range(READS_PER_SAMPLE):
        if index:
            time.sleep(READ_GAP)
        reads.append(_read(pid))
    return {key: min(r[key] for r in reads) for key in reads[0]}


def drift(points: Sequence[Tuple[float, float]]) -> float:
    """Least-squares slope of (t, value) times the window's length."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    sxx = sum((t - mean_t) ** 2 for t, _ in points)
    sxy = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return (sxy / sxx) * (points[-1][0] - points[0][0]) if sxx else 0.0


def flatness(rows: Sequence[Dict[str, float]], duration: float) -> Dict[str, Dict[str, float]]:
    """Per series: the drift over the judged half and its bound."""
    judged = [r for r in rows if r["t"] >= duration / 2]
    out = {}
    for key, bound in DRIFT_BOUNDS.items():
        warm = [r[key] for r in rows if r["t"] < duration / 2]
        out[key] = {
            "warm_mean": sum(warm) / len(warm) if warm else float("nan"),
            "judged_mean": sum(r[key] for r in judged) / len(judged) if judged else float("nan"),
            "drift": drift([(r["t"], r[key]) for r in judged]),
            "bound": bound,
        }
    return out


# -- the load ------------------------------------------------------------------------------------
class Soak:
    def __init__(self, patio: PatioProcess, peers: "Peers", duration: float) -> None:
        self.patio = patio
        self.peers = peers
        self.duration = duration
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.counts: Dict[str, int] = {}
        self.errors: List[str] = []
        self.relearn: List[float] = []
        self.bodies: List[bytes] = []  # one scrape per sample, for promtool
        self.latest_body = b""
        self.rows: List[Dict[str, float]] = []
        self.file_set = 0
        self.started = 0.0

    def count(self, what: str, amount: int = 1) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + amount

    def error(self, what: str) -> None:
        with self.lock:
            self.counts["errors"] = self.counts.get("errors", 0) + 1
            if len(self.errors) < MAX_ERRORS_KEPT:
                self.errors.append(f"{time.monotonic() - self.started:7.1f}s {what}")

    def _loop(self, name: str, every: float, step: Callable[[], None]) -> None:
        next_at = time.monotonic()
        while not self.halt.is_set():
            try:
                step()
            except Exception as exc:  # a worker's surprise is a finding, not the end of the soak
                self.error(f"{name}: {exc!r}")
            next_at = max(next_at + every, time.monotonic())
            self.halt.wait(next_at - time.monotonic())

    def probe(self, path: str) -> Callable[[], None]:
        def step() -> None:
            try:
                status, _headers, body = http_call("GET", self.patio.url + path, timeout=PROBE_TIMEOUT)
            except OSError as exc:
                status, body = 0, b""
                self.error(f"{path}: {exc!r}")
            self.count(f"{path} probes")
            if status != 200:
                self.count(f"{path} failed")
                if status:
                    self.error(f"{path}: {status} {body[:300].decode(errors='replace')}")

        return step

    def scrape(self) -> None:
        gzipped = self.counts.get("scrapes", 0) % 2 == 1
        headers = {"Accept-Encoding": "gzip"} if gzipped else {}
        status, answer_headers, body = http_call("GET", self.patio.url + "/metrics", headers=headers, timeout=15.0)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        if answer_headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.latest_body = body
        self.count("scrapes")

    def lora(self) -> None:
        index = self.counts.get("lora rounds", 0) % CHURN
        name = f"churn-{index}"
        source = self.peers.files.url + f"/adapters/{index}/adapter_model.safetensors"
        url = self.patio.url
        status, body = http_json("POST", url + "/v1/load_lora_adapter", {"lora_name": name, "lora_path": source})
        if status != 200:
            raise RuntimeError(f"load {name}: {status} {body}")
        status, body = http_json("POST", url + "/v1/unload_lora_adapter", {"lora_name": name})
        if status != 200:
            raise RuntimeError(f"unload {name}: {status} {body}")
        self.count("lora rounds")

    def swap(self) -> None:
        self.file_set = 1 - self.file_set
        self.peers.mount.write(adapters_file(FILE_SETS[self.file_set]))
        self.count("file swaps")

    def payload(self) -> None:
        self.peers.engine.metrics_body = engine_payload(self.counts.get("payloads", 0))
        self.count("payloads")

    def kv(self) -> None:
        self.peers.kv_step()
        self.count("kv batches")

    def router_restarts(self) -> None:
        every = self.duration / (ROUTER_RESTARTS + 1)
        for number in range(1, ROUTER_RESTARTS + 1):
            if self.halt.wait(max(self.started + number * every - time.monotonic(), 0.0)):
                return
            router, worker = self.peers.router, self.peers.engine.url
            try:
                router.restart()
            except Exception as exc:
                self.error(f"router restart: {exc!r}")
                continue
            back = time.monotonic()
            while time.monotonic() - back < RELEARN_TIMEOUT and not self.halt.is_set():
                try:
                    if router.listed(worker):
                        break
                except (OSError, AssertionError):
                    pass
                time.sleep(0.2)
            else:
                self.error(f"router restart {number}: worker not listed again within {RELEARN_TIMEOUT:g}s")
                continue
            self.relearn.append(time.monotonic() - back)
            self.count("router restarts")

    def sampler(self) -> None:
        every = self.duration / SAMPLES
        for number in range(SAMPLES + 1):
            if self.halt.wait(max(self.started + number * every - time.monotonic(), 0.0)):
                return
            t = time.monotonic() - self.started
            row = {"t": t, **sample(self.patio.proc.pid)}
            self.rows.append(row)
            if self.latest_body:
                self.bodies.append(self.latest_body)
            self.print_row(row)

    def print_row(self, row: Dict[str, float]) -> None:
        c = self.counts
        print(
            f"{row['t']:7.0f} {int(row['fds']):5d} {int(row['threads']):7d} {row['rss_mb']:8.1f} "
            f"{c.get('scrapes', 0):8d} {c.get('/healthz probes', 0):8d} {c.get('/ready probes', 0):7d} "
            f"{c.get('/healthz failed', 0) + c.get('/ready failed', 0):6d} {c.get('lora rounds', 0):6d} "
            f"{c.get('file swaps', 0):6d} {c.get('kv batches', 0):8d} {c.get('router restarts', 0):8d} "
            f"{c.get('errors', 0):6d}",
            flush=True,
        )

    def run(self) -> None:
        print(
            f"{'t (s)':>7} {'fds':>5} {'threads':>7} {'RSS MB':>8} {'scrapes':>8} {'healthz':>8} {'ready':>7} "
            f"{'failed':>6} {'lora':>6} {'swaps':>6} {'kv':>8} {'router':>8} {'errors':>6}",
            flush=True,
        )
        loops: Dict[str, Tuple[float, Callable[[], None]]] = {
            "healthz": (PROBE_EVERY, self.probe("/healthz")),
            "ready": (READY_EVERY, self.probe("/ready")),
            "scrape": (SCRAPE_EVERY, self.scrape),
            "lora": (LORA_EVERY, self.lora),
            "swap": (SWAP_EVERY, self.swap),
            "payload": (PAYLOAD_EVERY, self.payload),
            "kv": (1.0 / KV_BATCHES_PER_SECOND, self.kv),
        }
        self.started = time.monotonic()
        threads = [
            threading.Thread(target=self._loop, args=(name, every, step), daemon=True)
            for name, (every, step) in loops.items()
        ]
        threads += [threading.Thread(target=t, daemon=True) for t in (self.router_restarts, self.sampler)]
        for thread in threads:
            thread.start()
        self.halt.wait(self.duration + 0.5)  # the last sample falls at the end
        self.halt.set()
        for thread in threads:
            thread.join(30)


# -- the peers -----------------------------------------------------------------------------------
class Peers:
    def __init__(self, root: Path, router_name: str) -> None:
        self.root = root
        self.engine = FakeEngine("vllm")
        self.engine.metrics_body = engine_payload(0)
        self.files = FileServer({f"/adapters/{i}/adapter_model.safetensors": b"w" * 4096 for i in range(CHURN)})
        self.redis = RedisServer()
        self.publisher = Publisher()
        self.router = RealRouter(BY_NAME[router_name])
        self.mount = ConfigMapMount(root / "config")
        self.mount.write(adapters_file(FILE_SETS[0]))
        self.expected = Expected(pod=POD, model=MODEL)
        self._next_block = 0
        self.last_seq = -1

    def kv_step(self) -> None:
        """One batch: KV_BLOCKS_PER_BATCH blocks stored, those beyond the window removed."""
        first = self._next_block
        hashes = list(range(first, first + KV_BLOCKS_PER_BATCH))
        self._next_block += KV_BLOCKS_PER_BATCH
        tokens = [(first * 32 + i) % 50000 for i in range(32 * KV_BLOCKS_PER_BATCH)]
        old = [h for h in range(first - KV_WINDOW, first - KV_WINDOW + KV_BLOCKS_PER_BATCH) if h >= 0]
        events: List[Any] = [stored(hashes, tokens)]
        if old:
            events.append(removed(old))
        self.last_seq = self.publisher.publish(batch(events))
        self.expected.store(hashes, tokens)
        self.expected.remove(old)

    def patio(self) -> PatioProcess:
        instance = {"data": {"port": self.engine.port, "worker_type": "regular"}}
        env = {
            "INFERENCE_ENGINE": "vllm",
            "INFERENCE_ENGINE_ENDPOINT": self.engine.url,
            "PATIO_STATE_DIR": str(self.root / "state"),
            "PATIO_ADAPTER_DIR": str(self.root / "adapters"),
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(self.redis.port),
            "VLLM_ZMQ_ENDPOINT": self.publisher.endpoint,
            "VLLM_ZMQ_REPLAY_ENDPOINT": self.publisher.replay_endpoint,
            "TOPO_TYPE": self.router.generation.topo_type,
            "SGL_ROUTER_ENDPOINT": self.router.url,
            "POD_IP": "127.0.0.1",
            "HEARTBEAT_INTERVAL": str(HEARTBEAT),
        }
        args = ["-I", POD, "-N", MODEL, "--instance-info", json.dumps(instance)]
        args += ["--adapters-file", str(self.mount.path), "--adapters-file-interval", "1"]
        args += ["--engine-health-interval", "1", "--lora-reconcile-interval", "5"]
        return PatioProcess(args, env=env)

    def close(self) -> None:
        for stop in (self.router.stop, self.publisher.close, self.redis.close, self.files.stop, self.engine.stop):
            try:
                stop()
            except Exception as exc:  # the report matters more than a peer's clean exit
                print(f"stopping a peer: {exc!r}", file=sys.stderr)


# -- the end -------------------------------------------------------------------------------------
def _wait(predicate: Callable[[], Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (OSError, AssertionError):
            pass
        time.sleep(0.2)
    return False


def _promtool(bodies: Sequence[bytes]) -> List[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        return ["promtool is missing (tests/run.sh installs Debian's prometheus package)"]
    errors = []
    for body in dict.fromkeys(bodies):
        result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
        if result.returncode not in (0, 3) or b"parsing error" in result.stderr:  # 3: lint findings only
            errors.append(result.stderr.decode(errors="replace")[:300])
    return errors


def _kv_view(patio: PatioProcess) -> Dict[str, Any]:
    status, body = http_json("GET", patio.url + "/v1/kv-events")
    return body if status == 200 and isinstance(body, dict) else {}


def judge(soak: Soak, peers: Peers, patio: PatioProcess) -> List[str]:
    """What must hold after the load stops (before Patio is stopped)."""
    failures = []
    c = soak.counts
    if patio.returncode is not None:
        return [f"Patio exited {patio.returncode} during the soak"]
    if c.get("/healthz failed", 0) or c.get("/ready failed", 0):
        failures.append(f"probes failed: /healthz {c.get('/healthz failed', 0)}, /ready {c.get('/ready failed', 0)}")
    if c.get("router restarts", 0) != ROUTER_RESTARTS:
        failures.append(f"router restarts relearned: {c.get('router restarts', 0)} of {ROUTER_RESTARTS}")
    final = FILE_SETS[soak.file_set]
    wanted = {**KEEP, **final}
    if not _wait(lambda: {n: peers.engine.adapters.get(n) for n in wanted} == wanted, 30.0):
        failures.append(f"engine adapters {dict(peers.engine.adapters)}, wanted at least {wanted}")
    stale = sorted(set(peers.engine.adapters) - set(wanted))
    if stale:
        failures.append(f"adapters the engine should not hold: {stale}")
    if not _wait(lambda: _kv_view(patio).get("last_seq") == peers.last_seq, 30.0):
        failures.append(f"KV bridge at seq {_kv_view(patio).get('last_seq')}, publisher at {peers.last_seq}")
    client = peers.redis.client()
    if not _wait(lambda: redis_state(client, POD) == peers.expected.state(), 15.0):
        keys, matrix = redis_state(client, POD)
        want_keys, want_matrix = peers.expected.state()
        failures.append(
            f"Redis holds {len(keys)} keys / {len(matrix)} matrix entries, wanted {len(want_keys)} / {len(want_matrix)}"
        )
    if not peers.router.listed(peers.engine.url):
        failures.append("the router does not list the worker at the end")
    failures += [f"promtool: {e}" for e in _promtool(soak.bodies)]
    for key, result in flatness(soak.rows, soak.duration).items():
        if abs(result["drift"]) > result["bound"]:
            failures.append(
                f"{key} not flat: drift {result['drift']:+.2f} over the second half (bound {result['bound']:g})"
            )
    if soak.errors:
        failures.append(f"{c.get('errors', 0)} errors, first: {soak.errors}")
    return failures


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run (default 30; CI runs 2)")
    parser.add_argument("--router", default="vllm-router-0.1.17", choices=sorted(BY_NAME))
    args = parser.parse_args(argv)
    duration = args.minutes * 60.0
    root = Path(tempfile.mkdtemp(prefix="patio-soak-"))
    peers = Peers(root, args.router)
    patio: Optional[PatioProcess] = None
    failures: List[str] = []
    try:
        patio = peers.patio()
        for name, path in KEEP.items():
            status, body = http_json(
                "POST", patio.url + "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}
            )
            if status != 200:
                raise RuntimeError(f"loading {name}: {status} {body}")
        if not _wait(lambda: peers.router.listed(peers.engine.url), RELEARN_TIMEOUT):
            raise RuntimeError(f"Patio did not register with {args.router}; log:\n{patio.output()[-3000:]}")
        print(
            f"soak: {args.minutes:g} min, a sample every {duration / SAMPLES:g} s, router {args.router} "
            f"restarted every {duration / (ROUTER_RESTARTS + 1):g} s; Patio pid {patio.proc.pid}",
            flush=True,
        )
        soak = Soak(patio, peers, duration)
        soak.run()
        failures = judge(soak, peers, patio)
        print()
        print(f"{'series':8} {'warm-up mean':>12} {'second-half mean':>16} {'drift':>8} {'bound':>6}")
        for key, result in flatness(soak.rows, duration).items():
            print(
                f"{key:8} {result['warm_mean']:12.1f} {result['judged_mean']:16.1f} {result['drift']:+8.2f} "
                f"{result['bound']:6g}"
            )
        relearn = ", ".join(f"{s:.1f}" for s in soak.relearn)
        print(f"router restarts relearned in (s): {relearn or '-'}; counts {soak.counts}")
        log = patio.output()
        if "Traceback" in log:
            failures.append("Patio logged a traceback:\n" + log[log.index("Traceback") :][:2000])
        code = patio.stop(signal.SIGTERM)
        if code != 0:
            failures.append(f"Patio exited {code} on SIGTERM")
        left = redis_cli_scan(peers.redis.port)  # as an operator would list them
        if left:
            failures.append(f"{len(left)} keys left in Redis after Patio stopped, e.g. {left[:3]}")
    except Exception as exc:
        failures.append(f"the soak could not run: {exc!r}")
    finally:
        if patio is not None:
            patio.kill()
        peers.close()
        shutil.rmtree(root, ignore_errors=True)
    for failure in failures:
        print(f"FAIL {failure}")
    print("soak: ok" if not failures else f"soak: {len(failures)} failure(s)")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
