"""Process metrics read from procfs and the standard library (Linux; empty elsewhere).

Same names as prometheus_client's process collector, so dashboards carry over.
"""

import os
import resource
import time
from typing import Dict, List, Optional

from patio.metrics.model import Family, Sample
from patio.metrics.write import format_value, header_lines

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _boot_time() -> Optional[float]:
    try:
        with open("/proc/stat", "rb") as handle:
            for line in handle:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


class ProcessCollector:
    """The ``process_*`` families, read at each collection (the boot time, which never changes, once)."""

    def __init__(self, proc: str = "/proc/self") -> None:
        self.proc = proc
        self._boot: Optional[float] = None
        self._boot_read = False
        self._headers: Dict[str, List[str]] = {}  # HELP/TYPE lines per family, written once

    def collect(self) -> List[Family]:
        families: List[Family] = []
        proc = self.proc

        headers = self._headers

        def gauge(name: str, help: str, value: float, type: str = "gauge") -> None:
            header = headers.get(name)
            if header is None:
                header = headers[name] = header_lines(Family(name, type, help))
            sample = Sample(name, (), value, None, " " + format_value(value))
            families.append(Family(name, type, help, [sample], header))

        try:
            with open(f"{proc}/stat", "rb") as handle:
                # Fields after the parenthesised command name (which may contain spaces).
                fields = handle.read().rsplit(b")", 1)[1].split()
            utime, stime = float(fields[11]), float(fields[12])
            start_ticks = float(fields[19])
            rss_pages = float(fields[21])
            vsize = float(fields[20])
        except (OSError, IndexError, ValueError):
            usage = resource.getrusage(resource.RUSAGE_SELF)
            gauge(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                usage.ru_utime + usage.ru_stime,
                "counter",
            )
            return families
        gauge(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            (utime + stime) / _TICKS,
            "counter",
        )
        gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", vsize)
        gauge("process_resident_memory_bytes", "Resident memory size in bytes.", rss_pages * _PAGE_SIZE)
        if not self._boot_read:
            self._boot, self._boot_read = _boot_time(), True
        if self._boot is not None:
            gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                self._boot + start_ticks / _TICKS,
            )
        try:
            gauge("process_open_fds", "Number of open file descriptors.", float(len(os.listdir(f"{proc}/fd"))))
        except OSError:
            pass
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        gauge("process_max_fds", "Maximum number of open file descriptors.", float(soft))
        return families


def uptime_since(started_at: float) -> float:
    return max(time.time() - started_at, 0.0)
