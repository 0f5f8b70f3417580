"""``fetch()``: a listing of remote files -> a complete, verified local directory.

Blocking; call it from a worker thread.  For every source (S3, GCS, HF, HTTP) one run:

1. lists the source and checks the listing (``listing.accepted``);
2. plans against what the directory holds (``plan``): unchanged files are kept, half-done
   big files continue from their finished parts, what changed remotely is fetched again;
3. refuses at once what the disk cannot hold, then marks the directory incomplete (the
   manifest goes) before its first write;
4. fetches the parts in parallel (``workers``, ``transfer``): each file is fsync'd,
   verified and renamed into place, and the journal records it; transient errors retry
   with bounded backoff, 401/403/404 fail at once, a full disk fails naming the file;
5. removes files the listing no longer names, checks every file on disk once more, and
   writes the manifest last: only then is the directory complete.

Nothing is ever reported complete unless every file is on disk and verified.
"""

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from patio.artifacts.errors import ArtifactCorrupt
from patio.artifacts.fetch.listing import Source, accepted
from patio.artifacts.fetch.manifest import Entry, Layout
from patio.artifacts.fetch.options import MIN_PART_SIZE, FetchOptions
from patio.artifacts.fetch.part_file import PartFile
from patio.artifacts.fetch.plan import check_free_space, make_plan
from patio.artifacts.fetch.progress import Progress, Tracker, human_bytes
from patio.artifacts.fetch.transfer import Transfer
from patio.artifacts.fetch.workers import run_workers

log = logging.getLogger("patio.artifacts")


@dataclass(frozen=True)
class FetchResult:
    local_dir: str
    files: Tuple[Entry, ...]
    downloaded: int  # files fetched this run
    skipped: int  # files already complete
    bytes_downloaded: int
    bytes_total: int
    seconds: float


def fetch(
    source: Source,
    local_dir: str,
    options: FetchOptions = FetchOptions(),
    *,
    cancel: Optional[threading.Event] = None,
    on_progress: Optional[Callable[[Progress], None]] = None,
    progress_every: float = 0.5,
) -> FetchResult:
    """Make ``local_dir`` a complete, verified copy of ``source``.  Raises the error family."""
    started = time.monotonic()
    layout = Layout(local_dir)
    layout.ensure()
    display = source.display
    if on_progress:
        on_progress(Progress(phase="listing"))
    listed = source.list_files()
    files = accepted(listed, display, options.allow_suffixes)
    plan = make_plan(layout, listed, files, options.force)
    keep, todo = plan.keep, plan.todo

    part_files = [PartFile(f, layout, max(MIN_PART_SIZE, options.part_size)) for f in todo]
    for part_file in part_files:
        part_file.load_resume_state()
    resumed = sum(pf.resumed_bytes for pf in part_files)
    bytes_total = sum(f.size or 0 for f in files)
    tracker = Tracker(len(files), bytes_total, len(keep), sum(e.size for e in keep) + resumed)
    transfer = Transfer(source, layout, options, tracker, {e.path: e for e in keep}, cancel)

    if plan.changes:
        if options.check_free_space and todo:
            check_free_space(layout, sum(f.size or 0 for f in todo) - resumed)
        # From here on the directory changes: it stops being "complete" before the first write.
        layout.reset_journal(keep)
        layout.drop_manifest()
    if todo:
        log.info(
            "download %s -> %s: %d files to fetch (%s), %d already complete",
            display,
            layout.root,
            len(todo),
            human_bytes(sum(f.size or 0 for f in todo)),
            len(keep),
        )
        run_workers(transfer, part_files, on_progress, progress_every)

    tracker.phase = "finalizing"
    for entry in plan.stale:
        target = layout.target(entry.path)
        if os.path.isfile(target) and not os.path.islink(target):
            layout.remove(target)
    final = [transfer.entries[f.path] for f in files]
    for entry in final:  # belt and braces: never call complete what is not on disk
        target = layout.target(entry.path)
        if not os.path.isfile(target) or os.path.getsize(target) != entry.size:
            raise ArtifactCorrupt(f"{display} {entry.path}: missing or wrong size on disk after the download")
    if plan.changes:
        layout.write_manifest(display, final)
        layout.drop_journal()
        layout.drop_partial_dir()
    tracker.phase = "complete"
    snap = tracker.snapshot()
    if on_progress:
        on_progress(snap)
    seconds = time.monotonic() - started
    log.info(
        "download %s complete: %d files (%d fetched, %d already there), %s in %.1fs",
        display,
        len(final),
        len(todo),
        len(keep),
        human_bytes(snap.bytes_this_run),
        seconds,
    )
    return FetchResult(
        local_dir=layout.root,
        files=tuple(final),
        downloaded=len(todo),
        skipped=len(keep),
        bytes_downloaded=snap.bytes_this_run,
        bytes_total=sum(e.size for e in final),
        seconds=seconds,
    )
