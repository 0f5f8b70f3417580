"""Download progress: counters shared by the worker threads, snapshots, and the log line."""

import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class Progress:
    phase: str  # listing, downloading, finalizing, complete
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_this_run: int = 0
    elapsed: float = 0.0
    rate: float = 0.0  # bytes/s over this run
    eta: Optional[float] = None

    def to_json(self) -> Dict[str, Any]:
        return {
            "phase": self.phase,
            "files_total": self.files_total,
            "files_done": self.files_done,
            "bytes_total": self.bytes_total,
            "bytes_done": self.bytes_done,
            "rate_bytes_per_second": round(self.rate, 1),
            "eta_seconds": None if self.eta is None else round(self.eta, 1),
            "elapsed_seconds": round(self.elapsed, 3),
        }


def human_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} TiB"


def progress_line(display: str, p: Progress) -> str:
    eta = "?" if p.eta is None else f"{p.eta:.0f}s"
    return (
        f"download {display}: {p.files_done}/{p.files_total} files, "
        f"{human_bytes(p.bytes_done)}/{human_bytes(p.bytes_total)}, {human_bytes(p.rate)}/s, ETA {eta}"
    )


class Tracker:
    def __init__(self, files_total: int, bytes_total: int, files_done: int, bytes_done: int) -> None:
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.phase = "downloading"
        self.files_total = files_total
        self.bytes_total = bytes_total
        self.files_done = files_done
        self.bytes_done = bytes_done
        self.bytes_this_run = 0

    def add(self, count: int) -> None:
        with self.lock:
            self.bytes_done += count
            self.bytes_this_run += count

    def file_done(self, size_delta: int = 0) -> None:
        with self.lock:
            self.files_done += 1
            self.bytes_total += size_delta

    def snapshot(self) -> Progress:
        with self.lock:
            elapsed = time.monotonic() - self.started
            rate = self.bytes_this_run / elapsed if elapsed > 0 else 0.0
            remaining = max(0, self.bytes_total - self.bytes_done)
            eta = remaining / rate if rate > 0 else None
            return Progress(
                phase=self.phase,
                files_total=self.files_total,
                files_done=self.files_done,
                bytes_total=self.bytes_total,
                bytes_done=self.bytes_done,
                bytes_this_run=self.bytes_this_run,
                elapsed=elapsed,
                rate=rate,
                eta=eta,
            )
