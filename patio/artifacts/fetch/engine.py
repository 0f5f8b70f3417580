"""The one fetch engine: a listing of remote files -> a complete, verified local directory.

Blocking; call it from a worker thread.  For every source (S3, GCS, HF, HTTP):

- files are fetched by ``num_threads`` workers; files larger than ``part_size``
  are split into ranged parts fetched in parallel into one ``NAME.part``;
- each file is fsync'd, checked (size, and sha256 / md5 / git blob sha1 when the
  store declares one) and renamed into place; the journal records it;
- the manifest is written last: only then is the directory complete;
- a re-run skips files whose size and ETag match, continues half-done big files
  from their finished parts, and re-downloads what changed remotely;
- transient errors retry with bounded backoff; 401/403/404 fail at once;
  a full disk fails with a message naming the file; nothing is ever reported
  complete unless every file is on disk and verified.
"""

import collections
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

from patio.artifacts.errors import (
    ArtifactCorrupt,
    ArtifactError,
    ArtifactNotFound,
    DownloadCancelled,
    LocalWriteError,
    ObjectChanged,
    Transient,
)
from patio.artifacts.fetch.listing import MAX_FILES, RemoteFile, Source, check_layout, suffix_allowed, validate_relpath
from patio.artifacts.fetch.manifest import Entry, Layout, fsync_dir, write_error
from patio.artifacts.fetch.options import MIN_PART_SIZE, FetchOptions
from patio.artifacts.fetch.progress import Progress, Tracker, human_bytes, progress_line
from patio.artifacts.fetch.retry import call_with_retries
from patio.artifacts.fetch.verify import hash_file, hashers, verify
from patio.errors import PatioError

log = logging.getLogger("patio.artifacts")

# Bytes read from the network per call; also the pwrite size.
CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class FetchResult:
    local_dir: str
    files: Tuple[Entry, ...]
    downloaded: int  # files fetched this run
    skipped: int  # files already complete
    bytes_downloaded: int
    bytes_total: int
    seconds: float


class _FileJob:
    """One file being fetched: its parts, its open ``.part`` descriptor, its resume state."""

    def __init__(self, file: RemoteFile, layout: Layout, part_size: int) -> None:
        self.file = file
        self.layout = layout
        self.lock = threading.Lock()
        self.fd: Optional[int] = None
        self.parts: List[Tuple[int, Optional[int]]] = []
        size = file.size
        if size is None or not file.ranged or size <= part_size:
            self.parts = [(0, None if size is None else size - 1)]
            self.part_size = 0
        else:
            self.part_size = part_size
            self.parts = [(start, min(size, start + part_size) - 1) for start in range(0, size, part_size)]
        self.done: Set[int] = set()
        self.resumed_bytes = 0
        self.streamed_hash: Optional[Any] = None  # hashlib object fed in order (single part only)
        self.size_seen = 0

    @property
    def multipart(self) -> bool:
        return len(self.parts) > 1

    def load_resume_state(self) -> None:
        """Finished parts of an earlier run, if that run was for this very object."""
        if not self.multipart:
            return
        state = self.layout.read_part_state(self.file.path)
        part_path = self.layout.part(self.file.path)
        if (
            state
            and state.get("size") == self.file.size
            and state.get("etag") == self.file.etag
            and state.get("part_size") == self.part_size
            and os.path.isfile(part_path)
            and os.path.getsize(part_path) == self.file.size
        ):
            done = {i for i in state.get("done", []) if isinstance(i, int) and 0 <= i < len(self.parts)}
            self.done = done
            self.resumed_bytes = sum(self._part_length(i) for i in done)
        else:
            self.layout.drop_part_state(self.file.path)

    def _part_length(self, index: int) -> int:
        start, end = self.parts[index]
        return 0 if end is None else end - start + 1

    def pending(self) -> List[int]:
        return [i for i in range(len(self.parts)) if i not in self.done]

    def open_fd(self) -> int:
        with self.lock:
            if self.fd is not None:
                return self.fd
            path = self.layout.part(self.file.path)
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            except OSError as exc:
                raise write_error(path, exc) from None
            self.layout.check_inside(path)
            try:
                if self.multipart and self.done:
                    fd = os.open(path, os.O_RDWR)
                else:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                    if self.multipart and self.file.size:
                        os.ftruncate(fd, self.file.size)  # sparse; parts land at their offsets
            except OSError as exc:
                raise write_error(path, exc) from None
            self.fd = fd
            return fd

    def close_fd(self) -> None:
        with self.lock:
            if self.fd is not None:
                try:
                    os.close(self.fd)
                finally:
                    self.fd = None


class _Job:
    def __init__(
        self,
        source: Source,
        layout: Layout,
        options: FetchOptions,
        cancel: Optional[threading.Event],
    ) -> None:
        self.source = source
        self.layout = layout
        self.options = options
        self.cancel = cancel or threading.Event()
        self.abort = threading.Event()
        self.errors: List[BaseException] = []
        self.lock = threading.Lock()
        self.streams: Set[Any] = set()
        self.entries: Dict[str, Entry] = {}
        self.tracker: Optional[Tracker] = None

    # --- failure handling ---

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(exc)
            streams = list(self.streams)
        self.abort.set()
        for stream in streams:  # unblock workers stuck in a read
            try:
                getattr(stream, "abort", stream.close)()
            except Exception:
                pass

    def first_error(self) -> BaseException:
        # A real failure explains more than the cancellations it caused.
        for exc in self.errors:
            if not isinstance(exc, DownloadCancelled):
                return exc
        return self.errors[0]

    def check_running(self) -> None:
        if self.cancel.is_set():
            raise DownloadCancelled(f"download of {self.source.display} cancelled")
        if self.abort.is_set():
            raise DownloadCancelled(f"download of {self.source.display} aborted")

    # --- one part ---

    def run_part(self, fjob: _FileJob, index: int) -> None:
        start, end = fjob.parts[index]
        file = fjob.file
        if file.size == 0:
            fjob.open_fd()
            self.finish_part(fjob, index)
            return
        fd = fjob.open_fd()
        position = [start]
        if not fjob.multipart and (file.sha256 or file.md5 or file.git_sha1):
            fjob.streamed_hash = hashers(file)
        what = f"{self.source.display} {file.path}"

        def attempt() -> None:
            self.check_running()
            stream = self.source.open(file, position[0], end)
            with self.lock:
                self.streams.add(stream)
            try:
                if stream.offset != position[0]:
                    if stream.offset == 0 and not fjob.multipart:
                        # The server ignored Range: start this file over.
                        assert self.tracker is not None
                        self.tracker.add(-(position[0] - start))
                        position[0] = 0
                        fjob.streamed_hash = hashers(file) if fjob.streamed_hash is not None else None
                        os.ftruncate(fd, 0)
                    else:
                        raise ArtifactError(f"{what}: server answered bytes from {stream.offset}, not {position[0]}")
                while True:
                    self.check_running()
                    chunk = stream.read(CHUNK_SIZE)
                    if not chunk:
                        break
                    if end is not None and position[0] + len(chunk) > end + 1:
                        raise ArtifactCorrupt(f"{what}: server sent more bytes than the {file.size} listed")
                    _pwrite_all(fd, chunk, position[0], self.layout.part(file.path))
                    if fjob.streamed_hash is not None:
                        for hasher in fjob.streamed_hash.values():
                            hasher.update(chunk)
                    position[0] += len(chunk)
                    assert self.tracker is not None
                    self.tracker.add(len(chunk))
            finally:
                with self.lock:
                    self.streams.discard(stream)
                stream.close()
            if end is not None and position[0] != end + 1:
                raise Transient(f"{what}: body ended at byte {position[0]} of {end + 1}")

        try:
            call_with_retries(attempt, what, self.options.retry, self.cancel)
        except ObjectChanged as exc:
            raise ArtifactError(f"{what} changed while it was downloading ({exc}); run the download again") from None
        if end is None:
            fjob.size_seen = position[0]
        self.finish_part(fjob, index)

    def finish_part(self, fjob: _FileJob, index: int) -> None:
        finalize = False
        with fjob.lock:
            fjob.done.add(index)
            if fjob.multipart and len(fjob.done) < len(fjob.parts):
                # Persist progress: the data first (fsync), then the record that says it is there.
                assert fjob.fd is not None
                _fsync(fjob.fd, self.layout.part(fjob.file.path))
                self.layout.write_part_state(
                    fjob.file.path,
                    {
                        "path": fjob.file.path,
                        "size": fjob.file.size,
                        "etag": fjob.file.etag,
                        "part_size": fjob.part_size,
                        "done": sorted(fjob.done),
                    },
                )
            elif len(fjob.done) == len(fjob.parts):
                finalize = True
        if finalize:
            self.finalize_file(fjob)

    def finalize_file(self, fjob: _FileJob) -> None:
        file = fjob.file
        part_path = self.layout.part(file.path)
        target = self.layout.target(file.path)
        assert fjob.fd is not None
        _fsync(fjob.fd, part_path)
        fjob.close_fd()
        size = os.path.getsize(part_path)
        expected = file.size if file.size is not None else fjob.size_seen
        if size != expected:
            self.layout.remove(part_path)
            raise ArtifactCorrupt(f"{self.source.display} {file.path}: {size} bytes on disk, expected {expected}")
        if file.sha256 or file.md5 or file.git_sha1:
            digests = fjob.streamed_hash if fjob.streamed_hash is not None else hash_file(part_path, file)
            verify(self.source.display, file, {k: h.hexdigest() for k, h in digests.items()}, part_path)
        if os.path.isdir(target) and not os.path.islink(target):
            raise LocalWriteError(f"cannot write {target}: a directory is in the way")
        try:
            os.replace(part_path, target)
        except OSError as exc:
            raise write_error(target, exc) from None
        fsync_dir(os.path.dirname(target))
        entry = Entry(path=file.path, size=size, etag=file.etag, sha256=file.sha256)
        with self.lock:
            self.layout.append_journal(entry)
            self.entries[file.path] = entry
        if fjob.multipart:
            self.layout.drop_part_state(file.path)
        assert self.tracker is not None
        self.tracker.file_done(size_delta=size if file.size is None else 0)
        log.debug("downloaded %s (%d bytes)", file.path, size)


def _pwrite_all(fd: int, data: bytes, offset: int, path: str) -> None:
    view = memoryview(data)
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            if written <= 0:
                raise OSError(28, "No space left on device")
            view = view[written:]
            offset += written
    except OSError as exc:
        raise write_error(path, exc) from None


def _fsync(fd: int, path: str) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        raise write_error(path, exc) from None


def _local_matches(layout: Layout, entry: Optional[Entry], file: RemoteFile) -> bool:
    if entry is None or file.size is None or entry.size != file.size:
        return False
    if file.etag:
        if entry.etag != file.etag:
            return False
    elif not (file.sha256 and entry.sha256 == file.sha256):
        return False  # no version marker: we cannot tell it is unchanged
    target = layout.target(file.path)
    try:
        st = os.lstat(target)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == file.size


def _free_space_check(layout: Layout, needed: int) -> None:
    try:
        st = os.statvfs(layout.root)
    except (OSError, AttributeError):
        return
    free = st.f_bavail * st.f_frsize
    if needed > free:
        raise LocalWriteError(
            f"cannot write {layout.root}: the download needs {human_bytes(needed)} more, "
            f"only {human_bytes(free)} free on the device"
        )


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
    if len(listed) > MAX_FILES:
        raise ArtifactError(f"{display}: {len(listed)} files is more than the limit of {MAX_FILES}")
    for f in listed:
        validate_relpath(f.path, display)
    check_layout(listed, display)
    files = [f for f in listed if suffix_allowed(f.path, options.allow_suffixes)]
    if not listed:
        raise ArtifactNotFound(f"{display}: no files found (an empty listing is not a download)")
    if not files:
        raise ArtifactNotFound(
            f"{display}: none of the {len(listed)} files ends with an allowed suffix "
            f"({', '.join(options.allow_suffixes)})"
        )

    previous = layout.manifest_entries()
    manifest_present = bool(previous)
    known: Dict[str, Entry] = {} if options.force else {**previous, **layout.journal_entries()}
    keep: List[Entry] = []
    todo: List[RemoteFile] = []
    for f in files:
        entry = known.get(f.path)
        if _local_matches(layout, entry, f):
            assert entry is not None
            keep.append(entry)
        else:
            todo.append(f)
    listed_paths = {f.path for f in listed}
    stale = [e for p, e in {**previous, **known}.items() if p not in listed_paths]

    job = _Job(source, layout, options, cancel)
    job.entries = {e.path: e for e in keep}
    fjobs = [_FileJob(f, layout, max(MIN_PART_SIZE, options.part_size)) for f in todo]
    for fjob in fjobs:
        fjob.load_resume_state()
    bytes_total = sum(f.size or 0 for f in files)
    bytes_kept = sum(e.size for e in keep) + sum(fj.resumed_bytes for fj in fjobs)
    tracker = Tracker(len(files), bytes_total, len(keep), bytes_kept)
    job.tracker = tracker

    if todo or manifest_present is False or stale:
        if options.check_free_space and todo:
            _free_space_check(layout, sum(f.size or 0 for f in todo) - sum(fj.resumed_bytes for fj in fjobs))
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
        _run_workers(job, fjobs, options, on_progress, progress_every)

    tracker.phase = "finalizing"
    for entry in stale:
        target = layout.target(entry.path)
        if os.path.isfile(target) and not os.path.islink(target):
            layout.remove(target)
    final = [job.entries[f.path] for f in files]
    for entry in final:  # belt and braces: never call complete what is not on disk
        target = layout.target(entry.path)
        if not os.path.isfile(target) or os.path.getsize(target) != entry.size:
            raise ArtifactCorrupt(f"{display} {entry.path}: missing or wrong size on disk after the download")
    if todo or not manifest_present or stale:
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


def _run_workers(
    job: _Job,
    fjobs: List[_FileJob],
    options: FetchOptions,
    on_progress: Optional[Callable[[Progress], None]],
    progress_every: float,
) -> None:
    # Every task is known up front: a deque's popleft() is atomic, so no queue machinery is needed.
    tasks: Deque[Tuple[_FileJob, int]] = collections.deque()
    # Biggest files first: their parts spread over all workers while small files fill the gaps.
    for fjob in sorted(fjobs, key=lambda fj: -(fj.file.size or 0)):
        for index in fjob.pending():
            tasks.append((fjob, index))

    def worker() -> None:
        while not job.abort.is_set() and not job.cancel.is_set():
            try:
                fjob, index = tasks.popleft()
            except IndexError:
                return
            try:
                job.run_part(fjob, index)
            except BaseException as exc:
                job.fail(exc)
                return

    count = max(1, min(options.num_threads, len(tasks)))
    threads = [threading.Thread(target=worker, name=f"patio-fetch-{i}", daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    assert job.tracker is not None
    next_log = time.monotonic() + options.progress_interval
    try:
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(progress_every)
                if not thread.is_alive():
                    continue
                break
            if job.cancel.is_set() and not job.abort.is_set():
                job.fail(DownloadCancelled(f"download of {job.source.display} cancelled"))
            now = time.monotonic()
            snap = job.tracker.snapshot()
            if on_progress:
                on_progress(snap)
            if now >= next_log:
                log.info("%s", progress_line(job.source.display, snap))
                next_log = now + options.progress_interval
    finally:
        for fjob in fjobs:
            try:
                fjob.close_fd()
            except OSError:
                pass
            if not fjob.multipart and len(fjob.done) < len(fjob.parts):
                # A small file cut short is cheaper to fetch again than to track.
                job.layout.remove(job.layout.part(fjob.file.path))
    if job.errors:
        exc = job.first_error()
        if isinstance(exc, PatioError):
            raise exc
        if isinstance(exc, Transient):
            raise ArtifactError(exc.message)
        raise ArtifactError(f"download of {job.source.display} failed: {exc!r}") from exc
    if job.cancel.is_set():
        raise DownloadCancelled(f"download of {job.source.display} cancelled")
