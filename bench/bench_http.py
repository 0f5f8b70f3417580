"""What a probe costs: Patio from this checkout against older Patios and a FastAPI + uvicorn
sidecar serving the same route, side by side in one run.

Each server runs pinned to core 1 (``taskset -c 1``); this script and its load run on core 0.
Printed per server: CPU per sequential keep-alive ``GET /healthz`` (the server process's own
user + system time from /proc over N requests, median of 5 runs), requests/s with 4 and 16
keep-alive connections, RSS idle and after the load, and start to first 200; then the ratios
against the first server.

    .venv/bin/python bench/bench_http.py [--quick] [--requests N] [--no-fastapi] [OLDER ...]

OLDER is another Patio to compare: a ``patio.pyz`` or a source checkout (a directory holding
``patio.py``), e.g. ``git archive BASE | tar -x -C /tmp/base`` then ``/tmp/base``.

The load generator is a single thread of raw sockets (one precomputed request, answers framed
by Content-Length), so that it costs far less than the server it drives: http.client in threads
would measure the client.
"""

import argparse
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import ROOT, free_port, python, rss_mb, start, stop

PATH = "/healthz"
FASTAPI_PATH = "/health"  # the yardstick app's liveness route (bench/fastapi_metrics_app.py)
SERVER_CORE, LOAD_CORE = 1, 0
RUNS = 5


def probe(path: str) -> bytes:
    """What a kubelet HTTP probe sends (Go net/http, kubelet's prober)."""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: kube-probe/1.30\r\nAccept: */*\r\n\r\n".encode()


# The least any asyncio server costs here: a protocol that answers every read with one fixed
# write (no parsing, no routing, no Date).  What Patio costs above it is Patio's own.
FLOOR = """
import asyncio, sys
ANSWER = (b"HTTP/1.1 200 OK\\r\\nServer: floor\\r\\nContent-Type: application/json\\r\\n"
          b"Content-Length: 15\\r\\nConnection: keep-alive\\r\\n\\r\\n{\\"status\\":\\"ok\\"}")
class Answer(asyncio.Protocol):
    def connection_made(self, transport): self.transport = transport
    def data_received(self, data): self.transport.write(ANSWER)
async def main():
    await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", int(sys.argv[1]))
    await asyncio.Event().wait()
asyncio.run(main())
"""


class Figures(NamedTuple):
    cpu_us: float
    cpu_runs: List[float]
    rps4: float
    rps16: float
    rss_idle: float
    rss_after: float
    first_200: float


def cpu_seconds(pid: int) -> float:
    """User + system seconds of process ``pid`` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _answer_complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    at = head.lower().find(b"content-length:")
    if at < 0:
        return True
    end = head.find(b"\r\n", at)
    length = int(head[at + 15 : end if end >= 0 else len(head)])
    if len(body) > length:
        raise RuntimeError("more bytes than one answer: the server answered twice")
    return len(body) == length


def sequential(port: int, request: bytes, requests: int) -> None:
    """``requests`` keep-alive requests on one connection, one after the other."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(requests):
            sock.sendall(request)
            data = b""
            while not _answer_complete(data):
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("server closed the connection")
                data += chunk
            if not data.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer {data[:80]!r}")


def concurrent(port: int, request: bytes, connections: int, duration: float) -> float:
    """Requests/s with ``connections`` keep-alive connections, each sending its next request as
    soon as its answer is complete (one thread, a selector)."""
    selector = selectors.DefaultSelector()
    buffers: Dict[socket.socket, bytes] = {}
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        buffers[sock] = b""
        sock.send(request)
    done = 0
    started = time.monotonic()
    deadline = started + duration
    try:
        while time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("server closed a connection")
                data = buffers[sock] + chunk
                if _answer_complete(data):
                    done += 1
                    data = b""
                    sock.send(request)
                buffers[sock] = data
        return done / (time.monotonic() - started)
    finally:
        for sock in buffers:
            selector.unregister(sock)
            sock.close()


def measure(argv: Sequence[str], path: str, port: int, env: Dict[str, str], requests: int, duration: float) -> Figures:
    os.sched_setaffinity(0, {LOAD_CORE})
    pinned = ["taskset", "-c", str(SERVER_CORE), *argv]
    request = probe(path)
    starts = []
    for _ in range(3):  # start-up is noisy: best of three cold starts
        proc, seconds = start(pinned, port, env, path=path)
        starts.append(seconds)
        stop(proc)
    proc, _ = start(pinned, port, env, path=path)
    try:
        time.sleep(0.5)
        rss_idle = rss_mb(proc.pid)
        sequential(port, request, 2000)  # warm up: caches, the allocator, lazily built tables
        runs = []
        for _ in range(RUNS):
            before = cpu_seconds(proc.pid)
            sequential(port, request, requests)
            runs.append((cpu_seconds(proc.pid) - before) / requests * 1e6)
        rps4 = concurrent(port, request, 4, duration)
        rps16 = concurrent(port, request, 16, duration)
        rss_after = rss_mb(proc.pid)
    finally:
        stop(proc)
    return Figures(statistics.median(runs), runs, rps4, rps16, rss_idle, rss_after, min(starts))


def patio_argv(where: str, port: int) -> List[str]:
    target = where if where.endswith(".pyz") else os.path.join(where, "patio.py")
    flags = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
    # -S: no site (as the distroless image runs it); a checkout's patio.py needs its own directory
    # on sys.path, which -I would drop.
    return [sys.executable, "-S", *(["-I"] if where.endswith(".pyz") else []), target, *flags]


def floor_argv(port: int) -> List[str]:
    return [sys.executable, "-S", "-c", FLOOR, str(port)]


def fastapi_argv(port: int) -> List[str]:
    app = ["uvicorn", "fastapi_metrics_app:app", "--host", "127.0.0.1", "--port", str(port)]
    return [python(), "-m", *app, "--log-level", "warning"]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("older", nargs="*", help="older Patios: patio.pyz files or source checkouts")
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter load")
    parser.add_argument("--requests", type=int, default=0, help="sequential requests per CPU run")
    parser.add_argument("--no-fastapi", action="store_true", help="leave out the FastAPI yardstick")
    args = parser.parse_args(argv)
    requests = args.requests or (5000 if args.quick else 20000)
    duration = 2.0 if args.quick else 5.0
    env = dict(
        os.environ,
        PATIO_STATE_DIR=tempfile.mkdtemp(),
        PYTHONPATH=os.path.join(ROOT, "bench"),
        INFERENCE_ENGINE_ENDPOINT="http://127.0.0.1:9",
    )
    servers = [("patio (this checkout)", PATH, lambda port: patio_argv(ROOT, port))]
    for where in args.older:
        servers.append((f"patio ({where})", PATH, lambda port, where=where: patio_argv(where, port)))
    if not args.no_fastapi:
        servers.append((f"fastapi+uvicorn {FASTAPI_PATH}", FASTAPI_PATH, fastapi_argv))
    servers.append(("asyncio floor (fixed answer)", PATH, floor_argv))
    print(
        f"== GET {PATH}: server on core {SERVER_CORE}, load on core {LOAD_CORE}; CPU per request over"
        f" {requests} sequential keep-alive requests (median of {RUNS}); requests/s for {duration:g} s each"
    )
    results = []
    for label, path, build in servers:
        port = free_port()
        figures = measure(build(port), path, port, env, requests, duration)
        results.append((label, figures))
        spread = ", ".join(f"{run:.0f}" for run in sorted(figures.cpu_runs))
        print(
            f"  {label:28s} CPU {figures.cpu_us:6.1f} µs/request ({spread})  "
            f"{figures.rps4:7.0f} req/s @4  {figures.rps16:7.0f} req/s @16  "
            f"RSS {figures.rss_idle:5.1f} idle / {figures.rss_after:5.1f} MB after  "
            f"first 200 {figures.first_200 * 1000:4.0f} ms"
        )
    first_label, first = results[0]
    for label, other in results[1:]:
        print(
            f"  {first_label} vs {label}: CPU {first.cpu_us / other.cpu_us:4.2f}x, "
            f"throughput @4 {first.rps4 / other.rps4:4.2f}x, @16 {first.rps16 / other.rps16:4.2f}x, "
            f"RSS after {first.rss_after / other.rss_after:4.2f}x, start {first.first_200 / other.first_200:4.2f}x"
        )


if __name__ == "__main__":
    if not hasattr(os, "sched_setaffinity") or subprocess.call(["taskset", "-V"], stdout=subprocess.DEVNULL) != 0:
        sys.exit("needs Linux with taskset (util-linux): each server is pinned to its own core")
    main()
