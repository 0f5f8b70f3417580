"""What one fetch is asked to do (threads, part size, filters, retry) and the size defaults.

Apart from ``patio.artifacts.fetch.run`` so that the settings (parsed at every start) and
the job table name these without loading the engine, which a pod imports only with its first
download.
"""

from dataclasses import dataclass, field
from typing import Tuple

from patio.artifacts.fetch.retry import DownloadRetry

DEFAULT_PART_SIZE = 16 * 1024 * 1024
DEFAULT_THREADS = 16
# Parts never get smaller than this: below it, request overhead dominates.
MIN_PART_SIZE = 1024 * 1024


@dataclass(frozen=True)
class FetchOptions:
    num_threads: int = DEFAULT_THREADS
    part_size: int = DEFAULT_PART_SIZE
    allow_suffixes: Tuple[str, ...] = ()
    force: bool = False
    retry: DownloadRetry = field(default_factory=DownloadRetry)
    progress_interval: float = 10.0  # seconds between progress log lines
    check_free_space: bool = True
