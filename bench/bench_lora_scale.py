"""LoRA loads and unloads as the held set grows to ``--max-adapters 10000``.

Patio runs as a real process (``python -I -S patio.pyz`` or ``python patio.py``) in front of
the fake vLLM (tests/fakes/engine.py) in a process of its own.  ``--clients`` connections
load adapters ``a00000..`` (local paths, so no download), then unload them all.  Printed per
band of ``--band`` adapters: loads/s in that band, so a rate that falls as the set grows
shows; then the whole run's rate for loads and for unloads, and Patio's peak RSS.

    python bench/bench_lora_scale.py [PYZ_OR_PATIO_PY ...] [--adapters 10000] [--clients 8] [--deadline 600]

A phase that runs past ``--deadline`` seconds stops there and says how many it did (an
old build that slows as the set grows would otherwise take hours).

With ``--profile OUT`` Patio runs under cProfile (source checkout only) and writes OUT on exit.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from loadgen import ROOT, free_port, rss_mb, start, stop

# Patio ends with os._exit (patio/cli.py): the profile is written just before it.
PROFILED = """
import cProfile, os, runpy, sys
out, target = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[2:]
profile = cProfile.Profile()
real_exit = os._exit
def dump_and_exit(code):
    profile.disable()
    profile.dump_stats(out)
    real_exit(code)
os._exit = dump_and_exit
profile.enable()
runpy.run_path(target, run_name="__main__")
"""


def _engine_main(port: int, ready: Any) -> None:
    from fakes.engine import FakeEngine

    class Engine(FakeEngine):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._calls: List[Any] = []

        @property  # type: ignore[override]
        def calls(self) -> List[Any]:  # a bench of 20,000 calls does not keep each one
            return []

        @calls.setter
        def calls(self, value: List[Any]) -> None:
            pass

    Engine("vllm", port=port)
    ready.set()
    threading.Event().wait()


class Engine:
    def __init__(self) -> None:
        self.port = free_port()
        ctx = multiprocessing.get_context("fork")
        ready = ctx.Event()
        self.proc = ctx.Process(target=_engine_main, args=(self.port, ready), daemon=True)
        self.proc.start()
        if not ready.wait(60):
            raise RuntimeError("engine did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(5)


class Client:
    """One keep-alive connection to Patio."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, path: str, body: Dict[str, Any]) -> int:
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        response.read()
        return response.status


def _run(
    port: int, names: Sequence[str], clients: int, op: str, band: int, pid: int, deadline: float
) -> Dict[str, Any]:
    lock = threading.Lock()
    todo = list(reversed(names))
    done: List[float] = []
    failures: List[int] = []
    peak = [0.0]

    def worker() -> None:
        client = Client(port)
        while True:
            with lock:
                if not todo or time.monotonic() > started + deadline:
                    return
                name = todo.pop()
            if op == "load":
                status = client.post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": f"/models/{name}"})
            else:
                status = client.post("/v1/unload_lora_adapter", {"lora_name": name})
            with lock:
                done.append(time.monotonic())
                if status != 200:
                    failures.append(status)

    def sample() -> None:
        while threads[0].is_alive() or any(t.is_alive() for t in threads):
            try:
                peak[0] = max(peak[0], rss_mb(pid))
            except OSError:
                return
            time.sleep(0.2)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    done.sort()
    bands = []
    previous = started
    for end in range(band, len(done) + 1, band):
        bands.append(band / max(done[end - 1] - previous, 1e-9))
        previous = done[end - 1]
    return {
        "done": len(done),
        "rate": len(done) / elapsed,
        "elapsed": elapsed,
        "bands": bands,
        "failures": len(failures),
        "statuses": sorted(set(failures)),
        "peak": peak[0],
    }


def bench(target: str, args: argparse.Namespace, engine: Engine) -> None:
    port = free_port()
    state = tempfile.mkdtemp(prefix="patio-bench-state-")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": f"http://127.0.0.1:{engine.port}",
        "PATIO_STATE_DIR": state,
        "PATIO_LOG_LEVEL": "WARNING",
    }
    flags = ["--port", str(port), "--host", "127.0.0.1", "--max-adapters", str(args.adapters)]
    flags += ["--lora-reconcile-interval", "0"]
    if args.profile:
        argv = [sys.executable, "-c", PROFILED, args.profile, target, *flags]
    else:
        argv = [sys.executable, "-I", "-S", target, *flags] if target.endswith(".pyz") else [sys.executable, target]
        if not target.endswith(".pyz"):
            argv += flags
    proc, _ = start(argv, port, env)
    try:
        names = [f"a{i:05d}" for i in range(args.adapters)]
        loads = _run(port, names, args.clients, "load", args.band, proc.pid, args.deadline)
        loaded = names[: loads["done"]]  # names are handed out in order
        unloads = _run(port, loaded, args.clients, "unload", args.band, proc.pid, args.deadline)
    finally:
        stop(proc)
    print(f"{target}: {args.adapters} adapters, {args.clients} clients")
    for what, result in (("load", loads), ("unload", unloads)):
        bands = " ".join(f"{rate:.0f}" for rate in result["bands"])
        print(
            f"  {what:6s} {result['done']} at {result['rate']:7.1f}/s over {result['elapsed']:.1f}s, "
            f"failures {result['failures']} "
            f"{result['statuses']}, peak RSS {result['peak']:.1f} MB"
        )
        print(f"         per {args.band}: {bands}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", default=[os.path.join(ROOT, "patio.py")])
    parser.add_argument("--adapters", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--band", type=int, default=1000)
    parser.add_argument("--profile", help="run Patio under cProfile, writing this file")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds each phase may take (then it stops)")
    args = parser.parse_args(argv)
    engine = Engine()
    try:
        for target in args.targets:
            bench(target, args, engine)
    finally:
        engine.stop()


if __name__ == "__main__":
    main()
