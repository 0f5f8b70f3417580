"""/health: Patio (dist/patio.pyz) vs a FastAPI + uvicorn sidecar serving the same route,
side by side in one run: requests/s, p50/p99, RSS after load, start to first 200.

    .venv/bin/python bench/bench_http.py [--quick]
"""

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import ROOT, drive, free_port, python, rss_mb, start, stop

CLIENTS = 16


def measure(label, argv, port, env, duration):
    starts = []
    for _ in range(3):  # start-up is noisy: best of three cold starts
        proc, seconds = start(argv, port, env)
        starts.append(seconds)
        stop(proc)
    proc, _ = start(argv, port, env)
    try:
        drive(port, "/health", CLIENTS, 1.0)  # warm up
        result = drive(port, "/health", CLIENTS, duration)
        rss = rss_mb(proc.pid)
    finally:
        stop(proc)
    first = min(starts) * 1000
    print(f"  {label:8s} {result.summary()}  RSS after load {rss:5.1f} MB  start to first 200 {first:5.0f} ms")
    return result, rss, min(starts)


def main() -> None:
    duration = 3.0 if "--quick" in sys.argv else 8.0
    if not os.path.exists(os.path.join(ROOT, "dist", "patio.pyz")):
        os.system(f"bash {ROOT}/build_pyz.sh >/dev/null")
    env = dict(
        os.environ,
        PATIO_STATE_DIR=tempfile.mkdtemp(),
        PYTHONPATH=os.path.join(ROOT, "bench"),
        INFERENCE_ENGINE_ENDPOINT="http://127.0.0.1:9",
    )
    print(f"== GET /health, {CLIENTS} concurrent keep-alive clients, {duration:.0f} s each")
    port = free_port()
    patio = measure(
        "patio",
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
        duration,
    )
    port = free_port()
    fastapi = measure(
        "fastapi",
        [
            python(),
            "-m",
            "uvicorn",
            "fastapi_metrics_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        port,
        env,
        duration,
    )
    p99_ratio = fastapi[0].pct(0.99) / patio[0].pct(0.99)
    print(
        f"  ratios: throughput {patio[0].rps / fastapi[0].rps:4.1f}x, p99 {p99_ratio:4.1f}x"
        f" lower, RSS {fastapi[1] / patio[1]:4.1f}x smaller, start {fastapi[2] / patio[2]:4.1f}x faster"
    )


if __name__ == "__main__":
    main()
