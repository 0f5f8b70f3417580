"""Accelerator memory for the snapshot, read from ``nvidia-smi`` (no NVML binding needed).

AIBrix reads the same figures through pynvml (``gpu_memory_observation``); Patio stays
standard-library only and asks the ``nvidia-smi`` the GPU images ship, in CSV:

    --query-gpu=uuid,memory.total,memory.free          one line per card (MiB)
    --query-compute-apps=pid,gpu_uuid,used_memory      one line per process on a card (MiB)

A node without it (CPU-only) has no accelerators: an empty list, as AIBrix answers
without NVML.  Answers are cached for ``TTL`` seconds: a snapshot storm runs one query.
Parsing is pure; ``Gpus.observe`` is blocking (run it in a worker thread).
"""

import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

MIB = 1024 * 1024
TTL = 5.0
TIMEOUT = 2.0
# nvidia-smi prints a line per card and per process; more output than this is not its.
MAX_OUTPUT = 256 * 1024


@dataclass(frozen=True)
class Card:
    id: str
    total_bytes: int
    free_bytes: int

    def to_json(self) -> Dict[str, object]:
        # hbm_usable_bytes: AIBrix reads the driver's reservation through NVML's v2 memory query;
        # nvidia-smi does not print it, so "unknown" (-1), AIBrix's own value for that case.
        return {
            "id": self.id,
            "hbm_total_bytes": self.total_bytes,
            "hbm_free_bytes": self.free_bytes,
            "hbm_usable_bytes": -1,
        }


def _mib(token: str) -> Optional[int]:
    token = token.strip()
    return int(token) * MIB if token.isdigit() else None  # "[N/A]", "[Not Supported]"


def parse_cards(text: str) -> List[Card]:
    cards = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not parts[0]:
            continue
        total, free = _mib(parts[1]), _mib(parts[2])
        if total is None or free is None:
            continue
        cards.append(Card(parts[0], total, free))
    return cards


def parse_apps(text: str) -> Dict[int, Dict[str, int]]:
    """pid -> {card uuid -> bytes}."""
    usage: Dict[int, Dict[str, int]] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        used = _mib(parts[2])
        if used is None:
            continue
        per_card = usage.setdefault(int(parts[0]), {})
        per_card[parts[1]] = per_card.get(parts[1], 0) + used
    return usage


def peak_bytes(pids: List[int], usage: Dict[int, Dict[str, int]]) -> int:
    """The most an engine (its processes) holds on any one card: AIBrix's hbm_peak_bytes."""
    per_card: Dict[str, int] = {}
    for pid in pids:
        for card, used in usage.get(pid, {}).items():
            per_card[card] = per_card.get(card, 0) + used
    return max(per_card.values(), default=0)


class Gpus:
    def __init__(self, command: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.command = command
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: Optional[Tuple[float, List[Card], Dict[int, Dict[str, int]]]] = None

    def _run(self, query: str) -> Optional[str]:
        try:
            done = subprocess.run(
                [self.command, query, "--format=csv,noheader,nounits"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                timeout=TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):  # not installed, no driver, too slow
            return None
        if done.returncode != 0:
            return None
        return done.stdout[:MAX_OUTPUT].decode("utf-8", "replace")

    def observe(self) -> Tuple[List[Card], Dict[int, Dict[str, int]]]:
        with self._lock:
            cached = self._cached
            if cached is not None and self.clock() - cached[0] < TTL:
                return cached[1], cached[2]
            cards_text = self._run("--query-gpu=uuid,memory.total,memory.free")
            cards = parse_cards(cards_text) if cards_text else []
            apps_text = self._run("--query-compute-apps=pid,gpu_uuid,used_memory") if cards else None
            usage = parse_apps(apps_text) if apps_text else {}
            self._cached = (self.clock(), cards, usage)
            return cards, usage
