"""The worker threads of one download: every part of every file, biggest files first.

``num_threads`` threads take ``(file, part)`` tasks from one list known up front; the
calling thread reports progress (``on_progress`` every ``progress_every`` seconds, a
log line every ``progress_interval``), turns a cancel into an abort of every stream,
and afterwards closes the files, drops small files cut short and raises the first
real error.  Blocking; the caller is a worker thread of its own (never the event loop).
"""

import collections
import logging
import threading
import time
from typing import Callable, Deque, List, Optional, Tuple

from patio.artifacts.errors import ArtifactError, DownloadCancelled, Transient
from patio.artifacts.fetch.part_file import PartFile
from patio.artifacts.fetch.progress import Progress, progress_line
from patio.artifacts.fetch.transfer import Transfer
from patio.errors import PatioError

log = logging.getLogger("patio.artifacts")


def run_workers(
    transfer: Transfer,
    part_files: List[PartFile],
    on_progress: Optional[Callable[[Progress], None]],
    progress_every: float,
) -> None:
    options = transfer.options
    # Every task is known up front: a deque's popleft() is atomic, so no queue machinery is needed.
    tasks: Deque[Tuple[PartFile, int]] = collections.deque()
    # Biggest files first: their parts spread over all workers while small files fill the gaps.
    for part_file in sorted(part_files, key=lambda pf: -(pf.file.size or 0)):
        for index in part_file.pending():
            tasks.append((part_file, index))

    def worker() -> None:
        while not transfer.abort.is_set() and not transfer.cancel.is_set():
            try:
                part_file, index = tasks.popleft()
            except IndexError:
                return
            try:
                transfer.run_part(part_file, index)
            except BaseException as exc:
                transfer.fail(exc)
                return

    count = max(1, min(options.num_threads, len(tasks)))
    threads = [threading.Thread(target=worker, name=f"patio-fetch-{i}", daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    next_log = time.monotonic() + options.progress_interval
    try:
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(progress_every)
                if not thread.is_alive():
                    continue
                break
            if transfer.cancel.is_set() and not transfer.abort.is_set():
                transfer.fail(DownloadCancelled(f"download of {transfer.source.display} cancelled"))
            now = time.monotonic()
            snap = transfer.tracker.snapshot()
            if on_progress:
                on_progress(snap)
            if now >= next_log:
                log.info("%s", progress_line(transfer.source.display, snap))
                next_log = now + options.progress_interval
    finally:
        for part_file in part_files:
            try:
                part_file.close_fd()
            except OSError:
                pass
            if not part_file.multipart and len(part_file.done) < len(part_file.parts):
                # A small file cut short is cheaper to fetch again than to track.
                transfer.layout.remove(part_file.path)
    if transfer.errors:
        exc = transfer.first_error()
        if isinstance(exc, PatioError):
            raise exc
        if isinstance(exc, Transient):
            raise ArtifactError(exc.message)
        raise ArtifactError(f"download of {transfer.source.display} failed: {exc!r}") from exc
    if transfer.cancel.is_set():
        raise DownloadCancelled(f"download of {transfer.source.display} cancelled")
