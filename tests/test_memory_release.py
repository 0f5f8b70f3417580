"""Memory given back after a burst of scrapers that stop reading (issue 24, item 7).

The real test: Patio as a real process (the pyz) in front of an engine serving a 1.2 MB
payload; 300 real client sockets (a 4 KiB receive buffer each) pipeline three ``GET /metrics``
and never read.  Patio's RSS is read from /proc before, during and after.  Without the trim
after the burst (``patio.http.freed.FreedPieces``) about 12 MB stayed resident once every
one of them was gone: each stalled transport's output buffer (~21 KiB, asyncio copies what the
kernel does not take) freed between small blocks still in use, which glibc's heap cannot give
back without ``malloc_trim``.

"Before" is after a warm-up scrape: the first scrape of a payload builds its scrape plan and
line cache (``docs/metrics.md``), which stay by design; the burst must leave nothing beyond it.
"""

import asyncio
import socket
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
from fakes.engine import FakeEngine
from support import PatioProcess, http_call

from patio.http.freed import FreedPieces

CLIENTS = 300
RETURN_BOUND_MB = 5.0  # the bound: RSS within this of its level before the burst
BURST_SHOWS_MB = 6.0  # the burst must hold at least this much, or the test proves nothing
WRITE_TIMEOUT = 4.0


def _payload() -> bytes:
    line = b'vllm:request_latency_bucket{engine="0",le="%d.5",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0\n'
    head = b"# HELP vllm:request_latency x\n# TYPE vllm:request_latency histogram\n"
    return head + b"".join(line % i for i in range(12000))  # ~1.2 MB, as bench_attacks.py --only 3


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _settled_rss(pid: int, seconds: float = 1.0) -> float:
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(_rss_mb(pid))
        time.sleep(0.1)
    return min(samples)


def _non_readers(port: int) -> List[socket.socket]:
    socks = []
    for _ in range(CLIENTS):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        socks.append(sock)
    return socks


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.mark.parametrize("ending", ["clients-close", "write-timeout-cuts"])
def test_rss_returns_after_300_non_readers(tmp_path: Path, ending: str) -> None:
    engine = FakeEngine("vllm")
    engine.metrics_body = _payload()
    env = {
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "PATIO_STATE_DIR": str(tmp_path / "state"),
        "PATIO_WRITE_TIMEOUT": str(WRITE_TIMEOUT),
    }
    patio = PatioProcess(["--request-timeout", "3"], env=env)
    socks: List[socket.socket] = []
    try:
        pid = patio.proc.pid
        for _ in range(3):
            status, _headers, _body = http_call("GET", patio.url + "/metrics", timeout=30.0)
            assert status == 200
        time.sleep(1.5)
        fds_before, before = _fds(pid), _settled_rss(pid)

        socks = _non_readers(patio.port)
        peak = before
        started = time.monotonic()
        while time.monotonic() - started < WRITE_TIMEOUT * 0.6:
            peak = max(peak, _rss_mb(pid))
            time.sleep(0.1)
        report = f"before {before:.1f} MB, during {peak:.1f} MB"
        assert peak >= before + BURST_SHOWS_MB, f"the burst held too little to judge: {report}"

        if ending == "clients-close":
            for sock in socks:
                sock.close()
        # Every connection gone on Patio's side (closed by the client, or cut at --write-timeout).
        assert _wait(lambda: _fds(pid) <= fds_before + 2, WRITE_TIMEOUT + 20), f"fds {_fds(pid)} vs {fds_before}"
        for sock in socks:
            sock.close()
        returned = _wait(lambda: _rss_mb(pid) <= before + RETURN_BOUND_MB, 10.0)
        after = _settled_rss(pid)
        report += f", after {after:.1f} MB"
        print(report)
        assert returned and after <= before + RETURN_BOUND_MB, report
        status, _headers, _body = http_call("GET", patio.url + "/healthz", timeout=2.0)
        assert status == 200
        if ending == "write-timeout-cuts":
            _status, _headers, body = http_call("GET", patio.url + "/metrics", timeout=30.0)
            line = next(x for x in body.decode().splitlines() if x.startswith("patio_http_write_timeouts_total"))
            assert float(line.split()[-1]) >= CLIENTS * 0.9, line
    finally:
        for sock in socks:
            sock.close()
        patio.stop()
        engine.stop()


# -- FreedPieces, alone: when it trims --------------------------------------------------------
def _run_counts(steps: List[Tuple[float, int]], threshold: int = 100, delay: float = 0.05) -> Dict[str, Any]:
    """Feed ``freed(size)`` at the given times (s from start); returns trims run and when."""
    trims: List[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()

        def release() -> bool:
            trims.append(round(loop.time() - start, 2))
            return True

        async def run_blocking(func: Callable[[], bool]) -> bool:
            return func()

        pieces = FreedPieces(loop, run_blocking, threshold=threshold, delay=delay, release=release)
        for at, size in steps:
            await asyncio.sleep(max(at - (loop.time() - start), 0.0))
            pieces.freed(size)
        await asyncio.sleep(delay * 3)
        pieces.close()

    asyncio.run(main())
    return {"trims": len(trims), "at": trims}


@pytest.mark.parametrize(
    "steps, trims",
    [
        ([(0.0, 40), (0.0, 40)], 0),  # below the threshold: nothing
        ([(0.0, 60), (0.01, 60)], 1),  # past it: one trim, after the delay
        ([(0.0, 100)] + [(0.01, 100)] * 5, 1),  # freed within the delay: covered by the same trim
        ([(0.0, 100), (0.2, 100)], 2),  # a second burst after the first trim: a second trim
        ([(0.0, 100), (0.2, 50)], 1),  # what is counted after a trim waits for the threshold again
    ],
    ids=["below", "past", "coalesced", "two-bursts", "remainder-waits"],
)
def test_freed_pieces_trims(steps: List[Tuple[float, int]], trims: int) -> None:
    assert _run_counts(steps)["trims"] == trims


def test_freed_pieces_survives_a_pool_that_refuses() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()

        async def refusing(func: Callable[[], bool]) -> bool:
            raise RuntimeError("cannot schedule new futures after shutdown")

        pieces = FreedPieces(loop, refusing, threshold=10, delay=0.01, release=lambda: True)
        pieces.freed(20)
        await asyncio.sleep(0.05)
        pieces.freed(20)  # counted again: tries again
        await asyncio.sleep(0.05)
        pieces.close()
        return pieces.releases

    assert asyncio.run(main()) == 0
