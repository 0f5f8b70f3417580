"""KV-event bridge under hostile and heavy input: peak RSS, Redis commands, time, probe latency.

Each scenario starts a real Patio process from ``--root`` (a source checkout: this one by
default, or an older one to compare, e.g. ``git archive 4492134 | tar -x -C /tmp/before``),
a redis-server and a libzmq publisher (tests/kvevents_peers.py), and prints what it measured:

- ``backlog``: Redis down while the engine publishes ``--batches`` steps of 256 blocks x 32
  tokens; the Patio process's peak RSS growth (VmHWM) and the bytes it says it holds;
- ``jump``: one message whose sequence number jumps by 30,000,000; peak RSS growth, /health p99;
- ``amplify``: five 1 MiB payloads of 1M empty-array events and a 14 MB nested one;
- ``big``: one valid batch of 200,000 blocks; time until it is in Redis, /health p99 meanwhile;
- ``flap``: the publisher drops and comes back 12 times (the same engine) while Redis also holds
  20,000 blocks of other pods of the model; Redis commands per reconnect;
- ``flood``: single-block batches as fast as libzmq sends them for ``--seconds`` (60); events/s
  offered, RSS sampled every 5 s, /health p99, and whether Redis converged to the engine's state;
- ``idle``: /health p99 with the bridge live and idle (the baseline for the two p99s above).

    .venv/bin/python bench/bench_kvevents_hostile.py [--root DIR] [scenario ...]
"""

import argparse
import http.client
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "tests"))

from fakes.engine import FakeEngine  # noqa: E402
from kvevents_peers import Publisher, RedisServer, batch, free_port, redis_commands, stored, vm_hwm_kb  # noqa: E402

POD, MODEL = "bench-pod.ns", "bench-model"


def tokens(i: int, count: int = 32) -> List[int]:
    return [(i * 131 + t) % 50000 + 300 for t in range(count)]


def realistic(i: int, blocks: int = 256) -> bytes:
    hashes = [i * 1000 + b + 1 for b in range(blocks)]
    return batch([stored(hashes, [t for b in range(blocks) for t in tokens(i * 1000 + b)])])


class Patio:
    def __init__(self, root: Path, env: Dict[str, str]) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="patio-bench-", suffix=".log", delete=False)
        full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PATIO_STATE_DIR": tempfile.mkdtemp(), **env}
        argv = [sys.executable, str(root / "patio.py"), "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["-I", POD, "-N", MODEL, "--scrape-engine-metrics", "false"]
        self.proc = subprocess.Popen(argv, env=full, stdout=self.log, stderr=subprocess.STDOUT, cwd=str(root))
        wait(lambda: self.status("/health") == 200, 20)

    def status(self, path: str) -> Optional[int]:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            return status
        except OSError:
            return None

    def json(self, path: str) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", path)
        body = conn.getresponse().read()
        conn.close()
        return json.loads(body)

    def metric(self, name: str) -> float:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return float("nan")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


class Prober:
    """GET /health every 10 ms on a fresh connection (as the kubelet does); latencies kept."""

    def __init__(self, patio: Patio) -> None:
        self.patio = patio
        self.latencies: List[float] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            self.patio.status("/health")
            self.latencies.append(time.perf_counter() - started)
            self._stop.wait(0.01)

    def stop(self) -> str:
        self._stop.set()
        self.thread.join(10)
        ordered = sorted(self.latencies)
        p99 = ordered[min(int(0.99 * len(ordered)), len(ordered) - 1)] if ordered else float("nan")
        return (
            f"/health p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms ({len(ordered)} probes)"
        )


def wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:
            pass
        time.sleep(0.05)
    return False


def stack(root: Path, replay: bool = True, buffer_steps: int = 10_000, **env: str) -> "tuple[Any, Any, Any, Patio]":
    redis = RedisServer()
    publisher = Publisher(buffer_steps=buffer_steps)
    engine = FakeEngine("vllm")
    settings = {
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(redis.port),
        "VLLM_ZMQ_ENDPOINT": publisher.endpoint,
        "PATIO_KV_EVENTS_TIMEOUT": "2",
        "PATIO_KV_EVENTS_RETRY_MAX": "1",
        **env,
    }
    if replay:
        settings["VLLM_ZMQ_REPLAY_ENDPOINT"] = publisher.replay_endpoint
    patio = Patio(root, settings)
    wait(lambda: patio.json("/v1/kv-events")["state"] == "live", 20)
    return redis, publisher, engine, patio


def teardown(*peers: Any) -> None:
    for peer in peers:
        for method in ("close", "stop"):
            if hasattr(peer, method):
                try:
                    getattr(peer, method)()
                except Exception:
                    pass
                break


def received(patio: Patio) -> float:
    return patio.metric('patio_kv_events_received_total{type="BlockStored"}')


def scenario_backlog(root: Path, args: argparse.Namespace) -> str:
    redis, publisher, engine, patio = stack(root, buffer_steps=20)
    try:
        redis.stop()
        publisher.publish(realistic(0))
        wait(lambda: patio.json("/v1/kv-events")["state"] == "redis_down", 20)
        before = vm_hwm_kb(patio.proc.pid)
        payloads = [realistic(i) for i in range(1, args.batches + 1)]
        for payload in payloads:
            publisher.publish(payload)
        wait(lambda: received(patio) >= args.batches + 1, 300)
        growth = (vm_hwm_kb(patio.proc.pid) - before) / 1024
        state = patio.json("/v1/kv-events")
        held = state.get("backlog_bytes")
        wire = sum(len(p) for p in payloads) / len(payloads) / 1024
        return (
            f"{args.batches} batches of 256 blocks ({wire:.0f} KB each on the wire) while Redis is down: "
            f"peak RSS +{growth:.1f} MB, {state['backlog']} held"
            + (f" in {held / 1024:.0f} KB ({held / max(state['backlog'], 1) / 1024:.1f} KB each)" if held else "")
        )
    finally:
        teardown(patio, publisher, redis, engine)


def scenario_jump(root: Path, args: argparse.Namespace) -> str:
    redis, publisher, engine, patio = stack(root)
    try:
        for i in range(3):
            publisher.publish(batch([stored([i + 1], tokens(i))]))
        wait(lambda: patio.json("/v1/kv-events")["last_seq"] == 2, 20)
        before = vm_hwm_kb(patio.proc.pid)
        prober = Prober(patio)
        time.sleep(0.5)
        publisher.send_raw([b"kv-events", (2 + 30_000_000).to_bytes(8, "big"), batch([stored([9], tokens(9))])])
        time.sleep(5)
        probes = prober.stop()
        growth = (vm_hwm_kb(patio.proc.pid) - before) / 1024
        return f"a jump of 30,000,000: peak RSS +{growth:.1f} MB; {probes}"
    finally:
        teardown(patio, publisher, redis, engine)


def scenario_amplify(root: Path, args: argparse.Namespace) -> str:
    redis, publisher, engine, patio = stack(root)
    try:
        ts = b"\xcb" + struct.pack(">d", time.time())
        empty = b"\x93" + ts + b"\xdd" + (1_000_000).to_bytes(4, "big") + b"\x90" * 1_000_000 + b"\x00"
        nested = b"\x93" + ts + b"\xdd" + (3_500_000).to_bytes(4, "big") + b"\x91\x91\x91\x90" * 3_500_000 + b"\x00"
        before = vm_hwm_kb(patio.proc.pid)
        for payload in [empty] * 5 + [nested]:
            publisher.publish(payload)
        time.sleep(1)
        wait(
            lambda: (
                patio.status("/health") == 200
                and patio.metric('patio_kv_events_malformed_total{reason="payload"}') >= 6
            ),
            120,
        )
        time.sleep(2)
        growth = (vm_hwm_kb(patio.proc.pid) - before) / 1024
        return f"5 x 1 MiB of empty arrays + 14 MB nested: peak RSS +{growth:.1f} MB"
    finally:
        teardown(patio, publisher, redis, engine)


def scenario_big(root: Path, args: argparse.Namespace) -> str:
    redis, publisher, engine, patio = stack(root, PATIO_KV_EVENTS_TIMEOUT="5")
    try:
        blocks = 200_000
        payload = batch([stored(list(range(1, blocks + 1)), [(i * 7) % 50000 for i in range(blocks * 4)], 4)])
        client = redis.client()
        prober = Prober(patio)
        time.sleep(0.5)
        started = time.monotonic()
        publisher.publish(payload)
        done = wait(
            lambda: (
                client.exists(f"vllm:kv:block:{POD}@{blocks}") == 1 and patio.json("/v1/kv-events")["last_seq"] == 0
            ),
            180,
        )
        elapsed = time.monotonic() - started
        probes = prober.stop()
        outcome = "applied" if done else "NOT applied"
        return f"one batch of 200,000 blocks ({len(payload) / 1e6:.1f} MB): {outcome} in {elapsed:.2f}s; {probes}"
    finally:
        teardown(patio, publisher, redis, engine)


def scenario_flap(root: Path, args: argparse.Namespace) -> str:
    redis, publisher, engine, patio = stack(root)
    try:
        client = redis.client()
        pipe = client.pipeline(transaction=False)
        for i in range(20_000):  # other pods of the model share the matrix keys
            pipe.hset(f"matrix:kv:block:{MODEL}@{i}", f"other-{i % 4}.ns", "1")
        pipe.execute()
        for i in range(200):
            publisher.publish(batch([stored([i * 10 + b + 1 for b in range(8)], tokens(i, 8 * 32))]))
        wait(lambda: patio.json("/v1/kv-events")["last_seq"] == 199, 30)
        before = redis_commands(client)
        flaps = 12
        started = time.monotonic()
        for _ in range(flaps):
            publisher.bounce()
            wait(
                lambda: (
                    patio.json("/v1/kv-events")["state"] == "live"
                    and patio.json("/v1/kv-events")["publisher_connected"]
                ),
                30,
            )
            time.sleep(max(0.0, 30 / flaps - 0.5))
        elapsed = time.monotonic() - started
        wait(lambda: patio.json("/v1/kv-events")["state"] == "live", 30)
        used = redis_commands(client) - before - 1  # the second INFO
        connects = patio.metric('patio_kv_events_connects_total{peer="publisher"}')
        if connects != connects:  # an older Patio without the counter: its log says it
            patio.log.flush()
            connects = Path(patio.log.name).read_text(errors="replace").count("subscribed to")
        return (
            f"{flaps} publisher drops in {elapsed:.0f}s ({connects - 1:.0f} reconnects; 1,600 own blocks, "
            f"20,000 of other pods): {used / flaps:.0f} Redis commands per reconnect"
        )
    finally:
        teardown(patio, publisher, redis, engine)


def scenario_flood(root: Path, args: argparse.Namespace) -> str:
    redis, publisher, engine, patio = stack(root)
    try:
        from kvevents_peers import vm_rss_kb

        payload_for = [batch([stored([i + 1], [i % 50000, 1, 2, 3], 4)]) for i in range(1000)]
        prober = Prober(patio)
        rss: List[float] = []
        started = time.monotonic()
        sent = 0
        next_sample = started
        while time.monotonic() - started < args.seconds:
            publisher.publish(payload_for[sent % 1000])
            sent += 1
            if time.monotonic() >= next_sample:
                rss.append(vm_rss_kb(patio.proc.pid) / 1024)
                next_sample += 5
        offered = sent / (time.monotonic() - started)
        caught_up = wait(lambda: patio.json("/v1/kv-events")["state"] == "live", 120)
        client = redis.client()
        converged = wait(lambda: client.dbsize() >= 1000 + 1, 120)  # 1,000 distinct blocks, their matrix keys
        probes = prober.stop()
        state = "live" if caught_up else "NOT live"
        redis_state = "converged" if converged else "NOT converged"
        return (
            f"{sent:,} batches in {args.seconds:.0f}s ({offered:,.0f}/s offered): "
            f"RSS {min(rss):.1f}..{max(rss):.1f} MB, {state} after, Redis {redis_state}; {probes}"
        )
    finally:
        teardown(patio, publisher, redis, engine)


def scenario_idle(root: Path, args: argparse.Namespace) -> str:
    redis, publisher, engine, patio = stack(root)
    try:
        prober = Prober(patio)
        time.sleep(5)
        return f"idle, bridge live: {prober.stop()}"
    finally:
        teardown(patio, publisher, redis, engine)


SCENARIOS = {
    "backlog": scenario_backlog,
    "jump": scenario_jump,
    "amplify": scenario_amplify,
    "big": scenario_big,
    "flap": scenario_flap,
    "flood": scenario_flood,
    "idle": scenario_idle,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, default=HERE, help="the Patio source checkout to run")
    parser.add_argument("--batches", type=int, default=1500, help="batches published while Redis is down")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the flood lasts")
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    args = parser.parse_args()
    print(f"Patio from {args.root}")
    for name in args.scenarios:
        print(f"  {name:8s} {SCENARIOS[name](args.root.resolve(), args)}", flush=True)


if __name__ == "__main__":
    main()
