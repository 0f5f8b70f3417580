"""Metrics benchmarks: Patio against the incumbent approach, measured in the same run.

1. parse + rename throughput: Patio's parser/rules/writer vs prometheus_client's
   parser + rename + re-render, on each fixture and on a ~1 MB payload (the SGLang
   fixture replicated across dp_rank 0-15);
2. /metrics requests/s and p99 with 8 concurrent scrapers: Patio (pyz) vs the
   original FastAPI design (FastAPI + prometheus_client + requests under uvicorn),
   both in front of the same fake engine process serving the vLLM fixture;
3. /health p99 on Patio while /metrics is hammered with the 1 MB payload.

    .venv/bin/python bench/bench_metrics.py [--quick]
"""

import multiprocessing
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import ROOT, SHARED, drive, free_port, python, rss_mb, start, stop

from patio.metrics.assemble import assemble
from patio.metrics.parse import LineCache, parse
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
    parsed = parse(text, cache, verbatim=True)  # as the scrape path does
    return assemble([], parsed.families, RuleSet.for_scheme("patio", engine), "both").text


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


def _steady(copies, engine, cache, counter):
    counter[0] += 1
    return patio_transform(copies[counter[0] % len(copies)], engine, cache)


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
    print("  cold = first scrape (nothing cached); steady = later scrapes with 20% of values changed each time")
    for name, (engine, text) in payloads.items():
        ours = timeit(patio_transform, text, engine, min_time=min_time)
        theirs = timeit(incumbent_transform, text, engine, min_time=min_time)
        cache = LineCache()
        copies = changed_copies(text)
        for copy in copies:
            patio_transform(copy, engine, cache)
        warm = timeit(_steady, copies, engine, cache, [0], min_time=min_time)
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


def main() -> None:
    quick = "--quick" in sys.argv
    if not os.path.exists(os.path.join(ROOT, "dist", "patio.pyz")):
        os.system(f"bash {ROOT}/build_pyz.sh >/dev/null")
    bench_parse(quick)
    bench_http(quick)
    bench_health_under_load(quick)


if __name__ == "__main__":
    main()
