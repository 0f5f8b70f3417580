"""Hostile clients and payloads against a running Patio: floods, slow readers, metric churn, huge scrapes.

For each pyz given, and each attack: Patio runs as a real process (``python -I -S PYZ``) in
front of the fake engine (tests/fakes/engine.py, in a process of its own); a kubelet-like
prober opens a fresh connection every 50 ms for ``GET /healthz`` (1 s timeout, as the kubelet's
default); Patio's RSS is sampled every 100 ms.  Printed per attack: probes, failed probes
(non-200 or no answer within 1 s), /healthz p99, RSS at start, before the attack (after a warm-up
scrape, for the attacks that have one: the first scrape builds the payload's scrape plan and line
cache, which stay by design), at peak, and 3 s after the attack ended.  With two pyz files the
second is compared against the first.

    python bench/bench_attacks.py BEFORE.pyz AFTER.pyz [--only 1,3] [--clients 300] [--quick]

Attacks:
  1  idle flood: max-connections + 6 connections that never send a byte, re-opened when closed
  2  slow header trickle: 100 connections (--max-connections 100) sending 1 byte/s, re-opened
  3  non-readers: N clients pipeline three GET /metrics (1.2 MB engine payload), never read,
     and close after 10 s (--request-timeout 3, PATIO_WRITE_TIMEOUT=3); one warm-up scrape first
  9  label churn: the engine's label values change every scrape (100 new 10 KB lines), S scrapes
  10 one 1.5 M-series payload (about 27 MB, under the 32 MiB limit), scraped twice
"""

import argparse
import http.client
import multiprocessing
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from loadgen import free_port, rss_mb, start, stop

PROBE_INTERVAL = 0.05
PROBE_TIMEOUT = 1.0


# -- the engine, in a process of its own ---------------------------------------------------
def _payload_1mb() -> bytes:
    line = b'vllm:request_latency_bucket{engine="0",le="%d.5",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0\n'
    head = b"# HELP vllm:request_latency x\n# TYPE vllm:request_latency histogram\n"
    return head + b"".join(line % i for i in range(12000))  # ~1.2 MB


def _payload_huge() -> bytes:
    return b"# HELP s x\n# TYPE s gauge\n" + b"".join(b's{id="%07d"} 1\n' % i for i in range(1500000))


def _engine_main(port: int, kind: str, ready: Any) -> None:
    from fakes.engine import FakeEngine

    class ChurnEngine(FakeEngine):
        """Every scrape sees 100 lines it never saw before, each 10 KB (a line cache must stay bounded)."""

        scrapes = 0

        @property  # type: ignore[override]
        def metrics_body(self) -> bytes:
            ChurnEngine.scrapes += 1
            n = ChurnEngine.scrapes
            pad = "x" * 10000
            return "".join(f'churn{{id="{n}-{i}",pad="{pad}"}} 1\n' for i in range(100)).encode()

        @metrics_body.setter
        def metrics_body(self, value: bytes) -> None:
            pass

    if kind == "churn":
        ChurnEngine("vllm", port=port)
    else:
        engine = FakeEngine("vllm", port=port)
        engine.metrics_body = {"1mb": _payload_1mb, "huge": _payload_huge, "small": lambda: b"g 1\n"}[kind]()
    ready.set()
    threading.Event().wait()


class Engine:
    def __init__(self, kind: str) -> None:
        self.port = free_port()
        ctx = multiprocessing.get_context("fork")
        ready = ctx.Event()
        self.proc = ctx.Process(target=_engine_main, args=(self.port, kind, ready), daemon=True)
        self.proc.start()
        if not ready.wait(120):
            raise RuntimeError("engine did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(5)


# -- measurement ------------------------------------------------------------------------------
class Prober(threading.Thread):
    """A kubelet-like liveness probe: a fresh connection per probe, 1 s timeout."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.latencies: List[float] = []
        self.failures = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            started = time.perf_counter()
            ok = False
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=PROBE_TIMEOUT)
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
                conn.close()
            except (OSError, http.client.HTTPException):
                pass
            elapsed = time.perf_counter() - started
            self.latencies.append(elapsed if ok else max(elapsed, PROBE_TIMEOUT))
            self.failures += not ok
            self.halt.wait(max(PROBE_INTERVAL - elapsed, 0.0))

    def p99_ms(self) -> float:
        values = sorted(self.latencies)
        return values[min(int(len(values) * 0.99), len(values) - 1)] * 1000 if values else float("nan")


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return
            self.halt.wait(0.1)


# -- attacks: each returns a stop function (called at the end of the attack window) ----------
def _alive(sock: socket.socket) -> bool:
    """Still holding a slot: nothing came back (an answer such as a 503 or 408 means refused)."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        pass
    return False


def _maintain(port: int, count: int, duration: float, feed: Optional[bytes]) -> Callable[[], None]:
    """Keep ``count`` connections open for ``duration`` s; each sends ``feed`` one byte per second."""
    halt = threading.Event()

    def worker() -> None:
        socks: List[Optional[socket.socket]] = [None] * count
        sent = [0] * count
        next_byte = time.monotonic()
        while not halt.is_set():
            for i in range(count):
                sock = socks[i]
                if sock is None or not _alive(sock):
                    if sock is not None:
                        sock.close()
                    try:
                        fresh = socket.create_connection(("127.0.0.1", port), timeout=2)
                        fresh.setblocking(False)  # _alive() peeks without waiting
                        socks[i], sent[i] = fresh, 0
                    except OSError:
                        socks[i] = None
            if feed and time.monotonic() >= next_byte:
                next_byte += 1.0
                for i, sock in enumerate(socks):
                    if sock is not None and sent[i] < len(feed):
                        try:
                            sent[i] += sock.send(feed[sent[i] : sent[i] + 1])
                        except OSError:
                            pass
            halt.wait(0.2)
        for sock in socks:
            if sock is not None:
                sock.close()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()

    def finish() -> None:
        halt.set()
        thread.join(30)

    return finish


def attack_idle(port: int, args: argparse.Namespace) -> Callable[[], None]:
    return _maintain(port, 1030, args.duration, None)


def attack_trickle(port: int, args: argparse.Namespace) -> Callable[[], None]:
    return _maintain(port, 100, args.duration, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200)


def attack_nonreaders(port: int, args: argparse.Namespace) -> Callable[[], None]:
    socks = []
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 3
    for _ in range(args.clients):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(request)
            socks.append(sock)
        except OSError:
            sock.close()

    def finish() -> None:
        for sock in socks:
            sock.close()

    return finish


def _scrape(port: int, timeout: float = 120.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


def attack_scrapes(count: int) -> Callable[[int, argparse.Namespace], Callable[[], None]]:
    def attack(port: int, args: argparse.Namespace) -> Callable[[], None]:
        for _ in range(count if not args.quick else max(count // 4, 2)):
            _scrape(port)
        return lambda: None

    return attack


# number -> (title, engine payload, extra Patio flags, extra env, attack)
ATTACKS: Dict[str, Tuple[str, str, Sequence[str], Dict[str, str], Any]] = {
    "1": ("idle flood, 1030 conns", "small", (), {}, attack_idle),
    "2": ("1 byte/s, 100 conns (max 100)", "small", ("--max-connections", "100"), {}, attack_trickle),
    "3": (
        "non-readers x3 /metrics 1.2MB",
        "1mb",
        ("--request-timeout", "3"),
        {"PATIO_WRITE_TIMEOUT": "3"},
        attack_nonreaders,
    ),
    "9": ("label churn, 240 scrapes", "churn", (), {}, attack_scrapes(240)),
    "10": ("1.5M series, 27 MB payload", "huge", ("--metrics-scrape-timeout", "60"), {}, attack_scrapes(2)),
}


# Attacks measured against the RSS after this many warm-up scrapes (and a 1.5 s settle).
WARM_UP_SCRAPES = {"3": 1}


def run_attack(pyz: str, number: str, args: argparse.Namespace) -> Dict[str, float]:
    _title, payload, flags, extra_env, attack = ATTACKS[number]
    engine = Engine(payload)
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PATIO_STATE_DIR": f"/tmp/patio-bench-{port}"}
    # The engine by environment: Kthena's --engine/--engine-base-url flags select Kthena's profile
    # (its -I/-N required) in Patio versions with start profiles; every version reads these variables.
    env.update({"INFERENCE_ENGINE": "vllm", "INFERENCE_ENGINE_ENDPOINT": f"http://127.0.0.1:{engine.port}"})
    env.update(extra_env)
    argv = [sys.executable, "-I", "-S", pyz, "--host", "127.0.0.1", "--port", str(port), *flags]
    proc, _ = start(argv, port, env=env, path="/healthz")
    try:
        time.sleep(0.5)
        rss_start = rss_mb(proc.pid)
        rss_warm = float("nan")
        if number in WARM_UP_SCRAPES:
            for _ in range(WARM_UP_SCRAPES[number]):
                _scrape(port)
            time.sleep(1.5)
            rss_warm = rss_mb(proc.pid)
        prober, sampler = Prober(port), RssSampler(proc.pid)
        prober.start()
        sampler.start()
        began = time.monotonic()
        finish = attack(port, args)
        time.sleep(max(args.duration - (time.monotonic() - began), 0.0))
        finish()
        time.sleep(3.0)
        prober.halt.set()
        sampler.halt.set()
        prober.join(5)
        sampler.join(5)
        return {
            "probes": len(prober.latencies),
            "failed": prober.failures,
            "p99": prober.p99_ms(),
            "rss_start": rss_start,
            "rss_warm": rss_warm,
            "rss_peak": sampler.peak,
            "rss_after": rss_mb(proc.pid),
            "seconds": time.monotonic() - began,
        }
    finally:
        stop(proc)
        engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pyz", nargs="+")
    parser.add_argument("--only", default=",".join(ATTACKS))
    parser.add_argument("--clients", type=int, default=300, help="non-reading clients for attack 3 (default 300)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds each attack lasts (default 10)")
    parser.add_argument("--quick", action="store_true", help="fewer scrapes for attacks 9 and 10")
    args = parser.parse_args()
    wanted = [n for n in args.only.split(",") if n]
    results: Dict[Tuple[str, str], Dict[str, float]] = {}
    print(
        f"{'#':>3} {'attack':32} {'build':>8} {'probes':>6} {'failed':>6} {'p99 ms':>8} "
        f"{'RSS start':>9} {'warm':>7} {'peak':>7} {'after':>7}"
    )
    for number in wanted:
        for pyz in args.pyz:
            label = Path(pyz).resolve().parent.parent.name[:8] if len(args.pyz) > 1 else "pyz"
            r = results[(number, pyz)] = run_attack(pyz, number, args)
            print(
                f"{number:>3} {ATTACKS[number][0]:32} {label:>8} {int(r['probes']):6d} {int(r['failed']):6d} "
                f"{r['p99']:8.1f} {r['rss_start']:8.1f}M {r['rss_warm']:6.1f}M {r['rss_peak']:6.1f}M "
                f"{r['rss_after']:6.1f}M",
                flush=True,
            )
        if len(args.pyz) == 2:
            a, b = results[(number, args.pyz[0])], results[(number, args.pyz[1])]
            print(
                f"{'':>3} {'ratio second/first':32} {'':>8} {'':>6} {'':>6} {b['p99'] / a['p99']:8.2f} {'':>9} {'':>7} "
                f"{b['rss_peak'] / a['rss_peak']:7.2f} {b['rss_after'] / a['rss_after']:7.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
