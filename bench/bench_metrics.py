"""Metrics benchmarks: Patio against the incumbent approach, measured in the same run.

1. one scrape's CPU in-process, after warm-up, the engine's values changing at every scrape:
   Patio's scrape path (the plan) against its full path (parse, rename, assemble) and against
   prometheus_client's parser + rename + re-render, per fixture and mode;
2. one scrape's CPU as a whole process: Patio pinned to one core (``taskset -c 1``), a fake
   engine and this script on the other, N sequential scrapes, CPU time read from
   /proc/<pid>/stat; ``--baseline PATH`` (an older checkout with ``patio.py``, or a
   ``patio.pyz``) runs in the same run, interleaved, for the ratio;
3. parse + rename throughput on each fixture and on a ~1 MB payload (the SGLang fixture
   replicated across dp_rank 0-15), cold and steady;
4. /metrics requests/s and p99 with 8 concurrent scrapers: Patio (pyz) vs the original FastAPI
   design (FastAPI + prometheus_client + requests under uvicorn), same fake engine;
5. /health p99 on Patio while /metrics is hammered with the 1 MB payload.

    .venv/bin/python bench/bench_metrics.py [--quick] [--cost-only] [--baseline PATH] [--scrapes N]
"""

import functools
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import ROOT, SHARED, drive, free_port, python, rss_mb, start, stop

from patio.metrics.assemble import assemble
from patio.metrics.exposition import compose
from patio.metrics.parse import parse
from patio.metrics.pipeline import EngineText
from patio.metrics.registry import Registry
from patio.metrics.rules import RuleSet

FIXTURES = {
    "vllm-single (66 KB)": ("vllm", "vllm-0.33-single.txt"),
    "vllm-multiproc (51 KB)": ("vllm", "vllm-0.33-multiproc.txt"),
    "sglang (91 KB)": ("sglang", "sglang-0.5.23.txt"),
}


def big_sglang() -> str:
    text = Path(SHARED, "fixtures", "metrics", "sglang-0.5.23.txt").read_text()
    out = []
    for rank in range(16):
        for line in text.splitlines():
            if line.startswith("#"):
                if rank == 0:
                    out.append(line)
                continue
            if 'dp_rank="' in line:
                line = re.sub(r'dp_rank="[^"]*"', f'dp_rank="{rank}"', line)
            elif "{" in line:
                line = line.replace("{", f'{{dp_rank="{rank}",', 1)
            elif line.strip():
                name, value = line.split(" ", 1)
                line = f'{name}{{dp_rank="{rank}"}} {value}'
            out.append(line)
    return "\n".join(out) + "\n"


def patio_transform(text: str, engine: str, cache=None) -> str:
    parsed = parse(text, cache, verbatim=True)  # the full path, as a scrape without a plan
    return assemble([], parsed.families, RuleSet.for_scheme("patio", engine), "both").text


def new_values(data: bytes, count: int = 8) -> list:
    """``count`` successive scrapes of a busy engine: every sample line's value different each time."""
    copies = []
    for n in range(count):
        lines = []
        for i, line in enumerate(data.split(b"\n")):
            if line and not line.startswith(b"#") and b" " in line:
                line = line.rsplit(b" ", 1)[0] + b" %d.%d" % (n + 1, i)
            lines.append(line)
        copies.append(b"\n".join(lines))
    return copies


def own_families():
    """Patio's own families as a running sidecar has them (HTTP, engine scrape, process)."""
    from patio.metrics.process import ProcessCollector

    registry = Registry()
    requests = registry.counter("patio_http_requests_total", "r", ("method", "route", "code"))
    durations = registry.histogram("patio_http_request_duration_seconds", "d", ("method", "route"))
    for route in ("/metrics", "/health", "/v1/models"):
        requests.inc("GET", route, "200")
        durations.observe(0.001, "GET", route)
    for name in ("patio_engine_up", "patio_engine_scrape_duration_seconds", "patio_http_connections"):
        registry.gauge(name, "g").set(1.0)
    for name in ("patio_engine_metrics_dropped_lines_total", "patio_metrics_family_clashes_total"):
        registry.counter(name, "c")
    registry.add_collector(ProcessCollector().collect)
    return registry, requests


class Scrapes:
    """Patio's scrape path in-process: read, assemble, write Patio's own families (one /metrics)."""

    def __init__(self, data: bytes, engine: str, mode: str, plan: bool) -> None:
        self.copies = new_values(data)
        rules = RuleSet.for_scheme("patio", engine)
        self.text = EngineText(rules, mode) if plan else EngineText(rules, mode, plan_lines=-1)
        self.registry, self.requests = own_families()
        self.n = 0

    def __call__(self) -> int:
        self.n += 1
        self.requests.inc("GET", "/metrics", "200")  # an own metric changes at every scrape
        own = self.registry.collect()
        reading = self.text.read(self.copies[self.n % len(self.copies)])
        share = self.text.reuse(reading, own) or self.text.assemble(reading, own)
        return len(compose(own)) + sum(map(len, share.chunks))


def cpu_per_call(func, min_time: float) -> float:
    """Seconds of this thread's CPU per call (best of five rounds of ``min_time`` / 5)."""
    for _ in range(5):
        func()
    best = float("inf")
    for _ in range(5):
        runs, started = 0, time.thread_time()
        while time.thread_time() - started < min_time / 5 or runs < 3:
            func()
            runs += 1
        best = min(best, (time.thread_time() - started) / runs)
    return best


def bench_scrape_cpu(quick: bool) -> None:
    print("== one scrape's CPU in-process (read + assemble + Patio's own written), values changing each scrape")
    print("   us per scrape; best of 5 rounds; 'full' = Patio's full path (no plan), 'incumbent' = prometheus_client")
    min_time = 0.5 if quick else 2.0
    for label, (engine, name) in FIXTURES.items():
        data = Path(SHARED, "fixtures", "metrics", name).read_bytes()
        theirs = cpu_per_call(functools.partial(incumbent_transform, data.decode(), engine), min_time)
        for mode in ("standard", "both", "raw"):
            planned = cpu_per_call(Scrapes(data, engine, mode, plan=True), min_time)
            full = cpu_per_call(Scrapes(data, engine, mode, plan=False), min_time)
            print(
                f"  {label:24s} {mode:8s} plan {planned * 1e6:7.0f} | full {full * 1e6:7.0f} ({full / planned:4.1f}x)"
                f" | incumbent {theirs * 1e6:7.0f} ({theirs / planned:5.1f}x)"
            )


# --- whole process ---------------------------------------------------------------------------------


def serve_engine(port: int, path: str, changing: bool) -> None:
    """A fake engine for the whole-process figure: keep-alive, each answer written in one send (as
    uvicorn does); with ``changing`` the values differ at each scrape (eight variants in turn),
    else the capture is served as it is (the setup of issue 20's table)."""
    import socket
    import threading

    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
        for body in (new_values(Path(path).read_bytes()) if changing else [Path(path).read_bytes()])
    ]
    health = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    def connection(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending, served = b"", 0
        while True:
            data = conn.recv(65536)
            if not data:
                return
            pending += data
            while b"\r\n\r\n" in pending:
                head, pending = pending.split(b"\r\n\r\n", 1)
                if b" /metrics" in head.split(b"\r\n", 1)[0]:
                    conn.sendall(answers[served % len(answers)])
                    served += 1
                else:
                    conn.sendall(health)

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=connection, args=(conn,), daemon=True).start()


def _process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _patio_argv(target: str, port: int, mode: str) -> list:
    entry = target if target.endswith(".pyz") else os.path.join(target, "patio.py")
    argv = [sys.executable, entry, "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
    argv += ["--metrics-mode", mode]
    pin = ["taskset", "-c", "1"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
    return pin + argv


def whole_process(target: str, fixture: str, engine: str, mode: str, scrapes: int, gzip: bool, changing: bool) -> float:
    """CPU seconds of the Patio process per sequential /metrics scrape."""
    import http.client

    engine_port = free_port()
    serve = [python(), __file__, "--serve-engine", str(engine_port), fixture, "changing" if changing else "static"]
    fake, _ = start(serve, engine_port)
    env = dict(
        os.environ,
        INFERENCE_ENGINE=engine,
        INFERENCE_ENGINE_ENDPOINT=f"http://127.0.0.1:{engine_port}",
        PATIO_STATE_DIR=tempfile.mkdtemp(),
    )
    try:
        port = free_port()
        patio, _ = start(_patio_argv(target, port, mode), port, env)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            headers = {"Accept-Encoding": "gzip"} if gzip else {}

            def scrape() -> None:
                conn.request("GET", "/metrics", headers=headers)
                response = conn.getresponse()
                response.read()
                assert response.status == 200

            for _ in range(50):
                scrape()
            before = _process_cpu(patio.pid)
            for _ in range(scrapes):
                scrape()
            return (_process_cpu(patio.pid) - before) / scrapes
        finally:
            stop(patio)
    finally:
        stop(fake)


def bench_scrape_process(quick: bool, baseline: str, scrapes: int) -> None:
    print(f"== one scrape's CPU as a whole process (ms; {scrapes} sequential scrapes, Patio on core 1)")
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})  # the load generator and the fake engine stay off Patio's core
    targets = [("patio", ROOT)] + ([("baseline", baseline)] if baseline else [])
    vllm = ("vllm-multiproc", "vllm-0.33-multiproc.txt", "vllm")
    sglang = ("sglang", "sglang-0.5.23.txt", "sglang")
    # (fixture, mode, gzip asked, values changing at each scrape)
    rows = [
        (vllm, "standard", False, False),
        (vllm, "standard", False, True),
        (vllm, "both", False, True),
        (vllm, "standard", True, True),
        (sglang, "standard", False, True),
        (sglang, "both", False, True),
    ]
    for (label, name, engine), mode, gzip, changing in rows:
        fixture = os.path.join(SHARED, "fixtures", "metrics", name)
        figures = {}
        for who, target in targets * (1 if quick else 2):  # interleaved: A B A B
            cpu = whole_process(target, fixture, engine, mode, scrapes, gzip, changing)
            figures[who] = min(figures.get(who, cpu), cpu)
        what = f"{label:15s} {mode:8s} {'gzip' if gzip else '    '} {'new values' if changing else 'same values'}"
        row = f"  {what:44s} patio {figures['patio'] * 1000:5.2f}"
        if baseline:
            row += f" | baseline {figures['baseline'] * 1000:5.2f} ({figures['baseline'] / figures['patio']:4.1f}x)"
        print(row)


def changed_copies(text: str, count: int = 4, fraction: float = 0.2):
    """Successive scrapes of a busy engine: each copy changes the value on ~20% of sample lines."""
    lines = text.splitlines()
    copies = []
    for n in range(count):
        out = []
        for i, line in enumerate(lines):
            if line and not line.startswith("#") and (i * 7 + n) % int(1 / fraction) == 0:
                name = line.rsplit(" ", 1)[0]
                line = f"{name} {n + 1}{i}"
            out.append(line)
        copies.append("\n".join(out) + "\n")
    return copies


def incumbent_transform(text: str, engine: str) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fastapi_metrics_app import transform

    return transform(text)


def _steady(copies, text, counter):
    """Patio's scrape path (the plan when the series are unchanged) on successive payloads."""
    counter[0] += 1
    reading = text.read(copies[counter[0] % len(copies)])
    return text.reuse(reading, []) or text.assemble(reading, [])


def timeit(func, *args, min_time=1.5):
    runs, started = 0, time.perf_counter()
    while True:
        func(*args)
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_time and runs >= 3:
            return elapsed / runs


def bench_parse(quick: bool) -> None:
    print("== parse + rename + render (per payload, lower is better)")
    payloads = {k: (e, Path(SHARED, "fixtures", "metrics", f).read_text()) for k, (e, f) in FIXTURES.items()}
    big = big_sglang()
    payloads[f"sglang x16 dp_rank ({len(big) // 1024} KB)"] = ("sglang", big)
    min_time = 0.5 if quick else 1.5
    print("  cold = first scrape (nothing cached); steady = later scrapes, 20% of values changed each time (the plan)")
    for name, (engine, text) in payloads.items():
        ours = timeit(patio_transform, text, engine, min_time=min_time)
        theirs = timeit(incumbent_transform, text, engine, min_time=min_time)
        copies = [copy.encode() for copy in changed_copies(text)]
        engine_text = EngineText(RuleSet.for_scheme("patio", engine), "both")
        for number in range(len(copies)):
            _steady(copies, engine_text, [number])
        warm = timeit(_steady, copies, engine_text, [0], min_time=min_time)
        print(
            f"  {name:30s} prometheus_client {theirs * 1000:7.2f} ms | patio cold {ours * 1000:7.2f} ms "
            f"({theirs / ours:4.1f}x) | patio steady {warm * 1000:7.2f} ms ({theirs / warm:4.1f}x)"
        )


def bench_http(quick: bool) -> None:
    duration = 3.0 if quick else 8.0
    fixture = os.path.join(SHARED, "fixtures", "metrics", "vllm-0.33-single.txt")
    engine_port = free_port()
    engine, _ = start(
        [python(), os.path.join(ROOT, "bench", "fake_engine_server.py"), str(engine_port), fixture], engine_port
    )
    env = dict(
        os.environ,
        INFERENCE_ENGINE="vllm",
        INFERENCE_ENGINE_ENDPOINT=f"http://127.0.0.1:{engine_port}",
        PATIO_STATE_DIR=tempfile.mkdtemp(),
        PYTHONPATH=os.path.join(ROOT, "bench"),
    )
    results = {}
    try:
        patio_port = free_port()
        patio, patio_start = start(
            [
                sys.executable,
                "-I",
                "-S",
                os.path.join(ROOT, "dist", "patio.pyz"),
                "--host",
                "127.0.0.1",
                "--port",
                str(patio_port),
                "--log-level",
                "WARNING",
            ],
            patio_port,
            env,
        )
        fast_port = free_port()
        fast, fast_start = start(
            [
                python(),
                "-m",
                "uvicorn",
                "fastapi_metrics_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(fast_port),
                "--log-level",
                "warning",
            ],
            fast_port,
            env,
        )
        try:
            for label, port, proc in (("patio", patio_port, patio), ("fastapi", fast_port, fast)):
                drive(port, "/metrics", 8, 1.0)  # warm up
                result = drive(port, "/metrics", 8, duration)
                results[label] = (result, rss_mb(proc.pid))
        finally:
            stop(patio)
            stop(fast)
    finally:
        stop(engine)
    print("== /metrics, 8 concurrent keep-alive scrapers, vLLM fixture (66 KB)")
    for label, (result, rss) in results.items():
        print(f"  {label:8s} {result.summary()}  RSS {rss:6.1f} MB")
    ours, theirs = results["patio"][0], results["fastapi"][0]
    print(
        f"  ratio: throughput {ours.rps / max(theirs.rps, 1e-9):5.1f}x, p99 {theirs.pct(0.99) / ours.pct(0.99):5.1f}x"
        f" lower (start to first 200: patio {patio_start * 1000:.0f} ms, fastapi {fast_start * 1000:.0f} ms)"
    )


def bench_health_under_load(quick: bool) -> None:
    duration = 3.0 if quick else 6.0
    big = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
    big.write(big_sglang())
    big.close()
    engine_port = free_port()
    engine, _ = start(
        [python(), os.path.join(ROOT, "bench", "fake_engine_server.py"), str(engine_port), big.name], engine_port
    )
    env = dict(
        os.environ,
        INFERENCE_ENGINE="sglang",
        INFERENCE_ENGINE_ENDPOINT=f"http://127.0.0.1:{engine_port}",
        PATIO_STATE_DIR=tempfile.mkdtemp(),
    )
    try:
        port = free_port()
        patio, _ = start(
            [
                sys.executable,
                "-I",
                "-S",
                os.path.join(ROOT, "dist", "patio.pyz"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "WARNING",
            ],
            port,
            env,
        )
        try:
            idle = drive(port, "/health", 1, 2.0)
            # The scrapers run in another process so their GIL does not delay the prober's clock.
            hammer = multiprocessing.Process(target=drive, args=(port, "/metrics", 4, duration))
            hammer.start()
            time.sleep(0.3)
            loaded = drive(port, "/health", 1, duration - 0.5)
            hammer.join()
        finally:
            stop(patio)
    finally:
        stop(engine)
        os.unlink(big.name)
    print("== /health while /metrics is hammered with the 1 MB payload (4 scrapers)")
    print(f"  idle   {idle.summary()}")
    print(f"  loaded {loaded.summary()}")


def _option(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main() -> None:
    if "--serve-engine" in sys.argv:
        where = sys.argv.index("--serve-engine")
        serve_engine(int(sys.argv[where + 1]), sys.argv[where + 2], sys.argv[where + 3] == "changing")
        return
    quick = "--quick" in sys.argv
    bench_scrape_cpu(quick)
    bench_scrape_process(quick, _option("--baseline", ""), int(_option("--scrapes", "300" if quick else "1000")))
    if "--cost-only" in sys.argv:
        return
    if not os.path.exists(os.path.join(ROOT, "dist", "patio.pyz")):
        os.system(f"bash {ROOT}/build_pyz.sh >/dev/null")
    bench_parse(quick)
    bench_http(quick)
    bench_health_under_load(quick)


if __name__ == "__main__":
    main()
