"""What every hostile-input test checks of the Patio process it runs (issue 24): alive, bounded in
memory and threads, honest in its probes, and leaking no secret in anything it writes.

``Vitals`` samples a real process from /proc (RSS every 50 ms in a thread, so a short spike is
seen); ``leaks`` greps every output a test can collect for a secret value.
"""

import threading
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from support import PatioProcess, http_call


def proc_status(pid: int) -> Dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def rss_mb(pid: int) -> float:
    return int(proc_status(pid)["VmRSS"].split()[0]) / 1024


def threads(pid: int) -> int:
    return int(proc_status(pid)["Threads"])


class Vitals:
    """Peak RSS and thread count of ``pid`` while the ``with`` block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start_rss = rss_mb(pid)
        self.start_threads = threads(pid)
        self.peak_rss = self.start_rss
        self.peak_threads = self.start_threads
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._halt.is_set():
            try:
                self.peak_rss = max(self.peak_rss, rss_mb(self.pid))
                self.peak_threads = max(self.peak_threads, threads(self.pid))
            except (OSError, KeyError):
                return
            self._halt.wait(0.05)

    def __enter__(self) -> "Vitals":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join(5)

    def summary(self) -> str:
        return (
            f"RSS {self.start_rss:.1f} -> peak {self.peak_rss:.1f} MB, "
            f"threads {self.start_threads} -> peak {self.peak_threads}"
        )


def probes_honest(patio: PatioProcess) -> None:
    """Alive and answering its probes at once (the engine is up in these tests)."""
    assert patio.returncode is None, patio.output()[-3000:]
    for path in ("/health", "/healthz", "/ready"):
        status, _headers, body = http_call("GET", patio.url + path, timeout=2.0)
        assert status == 200, (path, status, body[:300])


def leaks(secret: str, patio: PatioProcess, texts: Iterable[str] = (), trees: Iterable[Path] = ()) -> List[str]:
    """Where ``secret`` appears: the log, the given answers, /metrics, the listings, state files."""
    found: List[str] = []
    if secret in patio.output():
        found.append("log")
    for index, text in enumerate(texts):
        if secret in text:
            found.append(f"answer {index}")
    for path in ("/metrics", "/v1/lora_adapters", "/v1/model/list"):
        if secret in http_call("GET", patio.url + path)[2].decode("utf-8", "replace"):
            found.append(path)
    for tree in trees:
        for item in tree.rglob("*"):
            if item.is_file() and not item.is_symlink() and secret.encode() in _head(item):
                found.append(str(item))
    return found


def _head(path: Path, limit: Optional[int] = 8 * 1024 * 1024) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(limit)
