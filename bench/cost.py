"""Cost per pod, side by side in one run: Patio from this checkout, any older ``patio.pyz`` named on
the command line, and the real AIBrix runtime 0.8.0 (PyPI ``aibrix==0.8.0``).

    python3 bench/cost.py [OLD.pyz[=LABEL] ...] [--quick] [--no-aibrix] [--realtime-starts]

Every server runs alone, pinned to one core (``taskset``); this script (the load) and the fake
engine run on the other.  Each sits in front of the same fake engine serving the vLLM capture
``../shared/fixtures/metrics/vllm-0.33-multiproc.txt`` and is started the way its users start it:
Patio as ``python3 patio.pyz --port N`` (the distroless image's Python, ``/usr/bin/python3``, when
there is one), AIBrix as ``aibrix_runtime --port N`` from a venv this script builds once under
``~/.cache/patio-bench`` (pip, from PyPI).  Patio runs in standard metrics mode
(``METRICS_MODE=standard``), as AIBrix transforms by default.

Printed, for each server: first 200 on ``/healthz`` after exec (best and median of a few cold
starts, and the CPU the start took), RSS idle and after 10k mixed requests, CPU per sequential
``/metrics`` scrape and per ``/healthz`` (the server's own user+system time from ``/proc``, over
many requests), requests/s with 4 and 16 keep-alive connections, the pyz size, then the ratios to
the incumbent and to each older pyz.  ``--realtime-starts`` (root) runs the cold starts at
SCHED_FIFO priority: on a machine shared with other jobs the first-200 figure is otherwise mostly
their scheduling.  Loopback only; every loop is bounded in count and time.
Not part of CI.
"""

import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from loadgen import free_port, rss_mb
from loadgen import stop as _stop

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT.parent / "shared" / "fixtures" / "metrics" / "vllm-0.33-multiproc.txt"
AIBRIX_VERSION = "0.8.0"
AIBRIX_VENV = Path.home() / ".cache" / "patio-bench" / f"aibrix-{AIBRIX_VERSION}"
# The interpreter of the distroless image (Debian 12's 3.11); the pyz carries its bytecode.
IMAGE_PYTHON = "/usr/bin/python3"

# Bounds: seconds a server may take to answer its first 200; seconds one measurement may run.
START_DEADLINE = 60.0
PHASE_DEADLINE = 120.0
# The 10k mixed requests may take longer on a slow server (AIBrix on a shared core: minutes).
MIXED_DEADLINE = 900.0
# Largest answer read (the vLLM capture renamed is ~60 KB; gzip is not asked for).
MAX_ANSWER = 4 * 1024 * 1024
# Seconds a started server idles before its idle RSS is read (start-up work settles).
IDLE_SETTLE = 3.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
# SCHED_FIFO priority of the cold starts with --realtime-starts (below the kernel's own threads).
REALTIME_PRIORITY = 50


class Plan:
    def __init__(self, quick: bool) -> None:
        self.starts = 3 if quick else 7
        self.scrapes = 150 if quick else 600
        self.healthz = 1500 if quick else 6000
        self.mixed = 10000
        self.seconds = 1.5 if quick else 4.0


# -- HTTP over raw sockets: the load generator must cost less than the servers it measures -----


def _request(method: str, path: str) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: patio-bench\r\n\r\n".encode()


def _complete(buffer: bytes) -> Optional[Tuple[int, int]]:
    """(status, bytes used) once ``buffer`` holds a whole answer, else None."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buffer[:head_end].decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    body_start = head_end + 4
    if "content-length" in fields:
        end = body_start + int(fields["content-length"])
        return (status, end) if len(buffer) >= end else None
    if fields.get("transfer-encoding", "").lower() == "chunked":
        at = body_start
        while True:
            line_end = buffer.find(b"\r\n", at)
            if line_end < 0:
                return None
            size = int(buffer[at:line_end].split(b";")[0], 16)
            at = line_end + 2 + size + 2
            if len(buffer) < at:
                return None
            if size == 0:
                return status, at
    raise RuntimeError(f"answer without a length: {head!r}")


class Connection:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def ask(self, raw: bytes) -> int:
        self.sock.sendall(raw)
        while True:
            done = _complete(self.buffer)
            if done is not None:
                status, used = done
                self.buffer = self.buffer[used:]
                return status
            chunk = self.sock.recv(262144)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk
            if len(self.buffer) > MAX_ANSWER:
                raise RuntimeError("answer too large")

    def close(self) -> None:
        self.sock.close()


def drive(port: int, requests: Sequence[bytes], connections: int, seconds: float, total: int = 0) -> Tuple[int, float]:
    """Keep ``connections`` keep-alive connections busy (one request in flight each) with the
    ``requests`` cycle, for ``seconds`` or until ``total`` answers; (200 answers, elapsed).
    Any other status stops the run with an error: a server that fails under load has no figure."""
    selector = selectors.DefaultSelector()
    conns = [Connection(port) for _ in range(connections)]
    turn = [0]
    answered = [0]
    sent = [0]

    def send(conn: Connection) -> None:
        conn.sock.sendall(requests[turn[0] % len(requests)])
        turn[0] += 1
        sent[0] += 1

    for conn in conns:
        selector.register(conn.sock, selectors.EVENT_READ, conn)
        send(conn)  # a request is ~80 bytes: it always fits the socket's send buffer
    started = time.monotonic()
    deadline = started + min(seconds, MIXED_DEADLINE)
    open_conns = len(conns)
    while open_conns and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            conn = key.data
            chunk = conn.sock.recv(262144)
            if not chunk:
                raise ConnectionError("server closed the connection")
            conn.buffer += chunk
            while True:
                done = _complete(conn.buffer)
                if done is None:
                    break
                status, used = done
                conn.buffer = conn.buffer[used:]
                if status != 200:
                    raise RuntimeError(f"status {status}")
                answered[0] += 1
                if total and sent[0] >= total:
                    selector.unregister(conn.sock)
                    open_conns -= 1
                    break
                send(conn)
    elapsed = time.monotonic() - started
    for conn in conns:
        conn.close()
    return answered[0], elapsed


# AIBrix's runtime can take longer than Patio to stop: SIGKILL only after this.
STOP_GRACE = 15.0


def stop(proc: subprocess.Popen) -> None:
    _stop(proc, STOP_GRACE)


# -- processes ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system time of the process (all its threads, living or gone)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def healthz_once(port: int) -> bool:
    try:
        conn = Connection(port)
    except OSError:
        return False
    try:
        return conn.ask(_request("GET", "/healthz")) == 200
    except (OSError, RuntimeError, ValueError, IndexError):
        return False
    finally:
        conn.close()


class Target:
    """One server: how to start it on a port."""

    def __init__(
        self,
        label: str,
        argv: Callable[[int], List[str]],
        env: Dict[str, str],
        size: Optional[int],
        metrics_path: str = "/metrics",
    ) -> None:
        self.label = label
        self.metrics_path = metrics_path
        self.argv = argv
        self.env = env
        self.size = size

    def spawn(self, port: int, core: int, realtime: bool = False) -> subprocess.Popen:
        priority = ["chrt", "-f", str(REALTIME_PRIORITY)] if realtime else []
        return subprocess.Popen(
            ["taskset", "-c", str(core), *priority, *self.argv(port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tempfile.gettempdir(),
            start_new_session=True,
        )


def start(target: Target, core: int, realtime: bool = False) -> Tuple[subprocess.Popen, int, float, float]:
    """(process, port, seconds from exec to the first 200 on /healthz, CPU seconds by then).

    ``realtime``: the server and this poller run SCHED_FIFO for the start, so the other jobs of a
    shared machine do not stretch the figure (root only; the process goes back to normal
    scheduling before any load is sent).
    """
    port = free_port()
    if realtime:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
    try:
        began = time.monotonic()
        proc = target.spawn(port, core, realtime)
        seconds = _await_first_200(target, proc, port, began)
        cpu = cpu_seconds(proc.pid)
    finally:
        if realtime:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    if realtime:
        for task in os.listdir(f"/proc/{proc.pid}/task"):  # every thread inherited SCHED_FIFO
            try:
                os.sched_setscheduler(int(task), os.SCHED_OTHER, os.sched_param(0))
            except OSError:
                pass  # a thread that has just ended
    return proc, port, seconds, cpu


def _await_first_200(target: Target, proc: subprocess.Popen, port: int, began: float) -> float:
    while not healthz_once(port):
        if proc.poll() is not None:
            raise RuntimeError(f"{target.label} exited with {proc.returncode} before answering")
        if time.monotonic() - began > START_DEADLINE:
            stop(proc)
            raise RuntimeError(f"{target.label} did not answer /healthz within {START_DEADLINE:.0f}s")
        time.sleep(0.0005)
    return time.monotonic() - began


def cpu_per_request(proc: subprocess.Popen, port: int, raw: bytes, count: int) -> float:
    conn = Connection(port)
    try:
        for _ in range(5):  # warm-up: first scrape, first parse, caches
            conn.ask(raw)
        before = cpu_seconds(proc.pid)
        deadline = time.monotonic() + PHASE_DEADLINE
        done = 0
        while done < count and time.monotonic() < deadline:
            if conn.ask(raw) != 200:
                raise RuntimeError("not 200")
            done += 1
        return (cpu_seconds(proc.pid) - before) / done
    finally:
        conn.close()


def measure(target: Target, plan: Plan, core: int, realtime: bool) -> Dict[str, float]:
    print(f"  {target.label}: starting", flush=True)
    firsts: List[float] = []
    start_cpu: List[float] = []
    for _ in range(plan.starts):
        proc, _port, seconds, cpu = start(target, core, realtime)
        firsts.append(seconds)
        start_cpu.append(cpu)
        stop(proc)
    proc, port, _seconds, _cpu = start(target, core)
    try:
        time.sleep(IDLE_SETTLE)
        result: Dict[str, float] = {
            "first200_best": min(firsts),
            "first200_median": statistics.median(firsts),
            "start_cpu": statistics.median(start_cpu),
            "rss_idle": rss_mb(proc.pid),
        }
        scrape = _request("GET", target.metrics_path)
        mixed = [_request("GET", "/healthz"), scrape, _request("GET", "/healthz"), _request("GET", "/ready"), scrape]
        answered, _ = drive(port, mixed, 4, MIXED_DEADLINE, total=plan.mixed)
        if answered < plan.mixed:
            raise RuntimeError(f"{target.label}: only {answered} of {plan.mixed} mixed requests answered")
        result["rss_load"] = rss_mb(proc.pid)
        result["cpu_scrape"] = cpu_per_request(proc, port, scrape, plan.scrapes)
        result["cpu_healthz"] = cpu_per_request(proc, port, _request("GET", "/healthz"), plan.healthz)
        for name, raw in (("metrics", scrape), ("healthz", _request("GET", "/healthz"))):
            for conns in (4, 16):
                answered, elapsed = drive(port, [raw], conns, plan.seconds)
                result[f"rps_{name}_{conns}"] = answered / elapsed
        result["rss_end"] = rss_mb(proc.pid)
    finally:
        stop(proc)
    if target.size is not None:
        result["size"] = target.size / 1024
    return result


# -- the servers ----------------------------------------------------------------------------------


def patio_python() -> str:
    return IMAGE_PYTHON if os.path.exists(IMAGE_PYTHON) else sys.executable


def patio_target(label: str, pyz: Path, engine_port: int, state: str) -> Target:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": state,
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": f"http://127.0.0.1:{engine_port}",
        "PATIO_STATE_DIR": os.path.join(state, label),
        "METRICS_MODE": "standard",
    }
    python = patio_python()
    return Target(
        label, lambda port: [python, str(pyz), "--host", "127.0.0.1", "--port", str(port)], env, pyz.stat().st_size
    )


def aibrix_venv() -> Path:
    """The AIBrix runtime's venv, built once (pip from PyPI) and reused."""
    runtime = AIBRIX_VENV / "bin" / "aibrix_runtime"
    if runtime.exists():
        return runtime
    print(f"  building the AIBrix {AIBRIX_VERSION} venv in {AIBRIX_VENV} (once)", flush=True)
    shutil.rmtree(AIBRIX_VENV, ignore_errors=True)
    AIBRIX_VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([patio_python(), "-m", "venv", str(AIBRIX_VENV)], check=True)
    subprocess.run(
        [str(AIBRIX_VENV / "bin" / "pip"), "install", "-q", f"aibrix=={AIBRIX_VERSION}"],
        check=True,
        timeout=1800,
    )
    return runtime


def aibrix_target(engine_port: int, state: str) -> Target:
    runtime = aibrix_venv()
    env = {
        "PATH": f"{runtime.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": state,
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": f"http://127.0.0.1:{engine_port}",
        "PROMETHEUS_MULTIPROC_DIR": os.path.join(state, "aibrix-prometheus"),
    }
    # AIBrix's documented command (its manifests: `aibrix_runtime --port 8080`).  Its /metrics is a
    # mounted app that answers 307 -> /metrics/ (Prometheus follows it): measured at /metrics/,
    # which leaves out the redirect's cost in AIBrix's favour.
    return Target(
        f"aibrix {AIBRIX_VERSION}",
        lambda port: [str(runtime), "--host", "127.0.0.1", "--port", str(port)],
        env,
        None,
        metrics_path="/metrics/",
    )


# -- the report -----------------------------------------------------------------------------------

ROWS = (
    ("cpu_scrape", "CPU per sequential /metrics scrape", lambda v: f"{v * 1000:.2f} ms"),
    ("cpu_healthz", "CPU per /healthz", lambda v: f"{v * 1e6:.0f} us"),
    ("rps_metrics_4", "/metrics req/s, 4 connections", lambda v: f"{v:.0f}"),
    ("rps_metrics_16", "/metrics req/s, 16 connections", lambda v: f"{v:.0f}"),
    ("rps_healthz_4", "/healthz req/s, 4 connections", lambda v: f"{v:.0f}"),
    ("rps_healthz_16", "/healthz req/s, 16 connections", lambda v: f"{v:.0f}"),
    ("rss_idle", "RSS idle", lambda v: f"{v:.1f} MB"),
    ("rss_load", "RSS after 10k mixed requests", lambda v: f"{v:.1f} MB"),
    ("rss_end", "RSS at the end of the run", lambda v: f"{v:.1f} MB"),
    ("first200_best", "first 200 after exec, best", lambda v: f"{v:.3f} s"),
    ("first200_median", "first 200 after exec, median", lambda v: f"{v:.3f} s"),
    ("start_cpu", "CPU until the first 200", lambda v: f"{v:.3f} s"),
    ("size", "patio.pyz", lambda v: f"{v:.0f} KB"),
)


def table(results: Dict[str, Dict[str, float]]) -> None:
    labels = list(results)
    width = max(len(label) for label in labels) + 2
    print(f"\n{'':38s}" + "".join(f"{label:>{width}s}" for label in labels))
    for key, name, fmt in ROWS:
        cells = [fmt(results[label][key]) if key in results[label] else "-" for label in labels]
        print(f"{name:38s}" + "".join(f"{cell:>{width}s}" for cell in cells))
    this = labels[0]
    others = labels[1:]
    if not others:
        return
    print(f"\nratios: {this} / other (below 1: {this} costs less; for req/s above 1: {this} serves more)")
    print(f"{'':38s}" + "".join(f"{label:>{width}s}" for label in others))
    for key, name, _fmt in ROWS:
        cells = []
        for label in others:
            a, b = results[this].get(key), results[label].get(key)
            cells.append(f"{a / b:.2f}x" if a is not None and b else "-")
        print(f"{name:38s}" + "".join(f"{cell:>{width}s}" for cell in cells))


def main(argv: Sequence[str]) -> int:
    quick = "--quick" in argv
    with_aibrix = "--no-aibrix" not in argv
    realtime = "--realtime-starts" in argv
    olds = [a for a in argv if not a.startswith("--")]
    plan = Plan(quick)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or shutil.which("taskset") is None:
        print("needs two cores and taskset (util-linux)", file=sys.stderr)
        return 2
    load_core, server_core = cores[0], cores[-1]
    os.sched_setaffinity(0, {load_core})
    subprocess.run(["bash", str(ROOT / "build_pyz.sh")], check=True, stdout=subprocess.DEVNULL)
    state = tempfile.mkdtemp(prefix="patio-cost-")
    engine_port = free_port()
    engine = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(load_core),
            sys.executable,
            str(ROOT / "bench" / "fake_engine_server.py"),
            str(engine_port),
            str(FIXTURE),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    targets = [patio_target("patio (this checkout)", ROOT / "dist" / "patio.pyz", engine_port, state)]
    for n, old in enumerate(olds):
        path, _, label = old.partition("=")
        targets.append(patio_target(label or f"older pyz {n + 1}", Path(path).resolve(), engine_port, state))
    try:
        if with_aibrix:
            targets.append(aibrix_target(engine_port, state))
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", engine_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        print(
            f"== cost per pod: servers on core {server_core}, load and fake engine on core {load_core}; "
            f"engine payload {FIXTURE.name} ({FIXTURE.stat().st_size // 1024} KB); python {patio_python()}; "
            f"cold starts {'at SCHED_FIFO priority' if realtime else 'at normal priority'}"
        )
        for target in targets:
            print(f"  {target.label}: {' '.join(target.argv(0))}")
        results = {target.label: measure(target, plan, server_core, realtime) for target in targets}
    finally:
        stop(engine)
        shutil.rmtree(state, ignore_errors=True)
    table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
