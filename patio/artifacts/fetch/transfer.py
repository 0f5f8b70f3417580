"""Bytes from the store into place: one part over the network, one file verified and renamed.

``Transfer`` is what the workers of one download share: the source, the target layout,
the options, the progress tracker, the entries finished so far, and the failure state
(the first error, the streams to abort so that every worker stops).  ``run_part`` moves
one ranged part with retries into its file's ``NAME.part``; after the last part the file
is fsync'd, checked (size; sha256 / md5 / git blob sha1 when the store declares one),
renamed into place and recorded in the journal.  Blocking; run in worker threads.
"""

import logging
import os
import threading
from typing import Any, Dict, List, Optional, Set

from patio.artifacts.errors import (
    ArtifactCorrupt,
    ArtifactError,
    DownloadCancelled,
    LocalWriteError,
    ObjectChanged,
    Transient,
)
from patio.artifacts.fetch.listing import Source
from patio.artifacts.fetch.manifest import Entry, Layout, fsync_dir, write_error
from patio.artifacts.fetch.options import FetchOptions
from patio.artifacts.fetch.part_file import PartFile, fsync, pwrite_all
from patio.artifacts.fetch.progress import Tracker
from patio.artifacts.fetch.retry import call_with_retries
from patio.artifacts.fetch.verify import hash_file, hashers, verify

log = logging.getLogger("patio.artifacts")

# Bytes read from the network per call; also the pwrite size.
CHUNK_SIZE = 1024 * 1024


class Transfer:
    def __init__(
        self,
        source: Source,
        layout: Layout,
        options: FetchOptions,
        tracker: Tracker,
        entries: Dict[str, Entry],
        cancel: Optional[threading.Event],
    ) -> None:
        self.source = source
        self.layout = layout
        self.options = options
        self.tracker = tracker
        self.entries = entries  # path -> what is complete on disk (kept files, then fetched ones)
        self.cancel = cancel or threading.Event()
        self.abort = threading.Event()
        self.errors: List[BaseException] = []
        self.lock = threading.Lock()
        self.streams: Set[Any] = set()

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

    def run_part(self, part_file: PartFile, index: int) -> None:
        start, end = part_file.parts[index]
        file = part_file.file
        if file.size == 0:
            part_file.open_fd()
            self.finish_part(part_file, index)
            return
        fd = part_file.open_fd()
        position = [start]
        if not part_file.multipart and (file.sha256 or file.md5 or file.git_sha1):
            part_file.streamed_hash = hashers(file)
        what = f"{self.source.display} {file.path}"

        def attempt() -> None:
            self.check_running()
            stream = self.source.open(file, position[0], end)
            with self.lock:
                self.streams.add(stream)
            try:
                if stream.offset != position[0]:
                    if stream.offset == 0 and not part_file.multipart:
                        # The server ignored Range: start this file over.
                        self.tracker.add(-(position[0] - start))
                        position[0] = 0
                        part_file.streamed_hash = hashers(file) if part_file.streamed_hash is not None else None
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
                    pwrite_all(fd, chunk, position[0], part_file.path)
                    if part_file.streamed_hash is not None:
                        for hasher in part_file.streamed_hash.values():
                            hasher.update(chunk)
                    position[0] += len(chunk)
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
            part_file.size_seen = position[0]
        self.finish_part(part_file, index)

    def finish_part(self, part_file: PartFile, index: int) -> None:
        if part_file.mark_done(index):
            self.finalize_file(part_file)

    # --- one file ---

    def finalize_file(self, part_file: PartFile) -> None:
        file = part_file.file
        part_path = part_file.path
        target = self.layout.target(file.path)
        assert part_file.fd is not None
        fsync(part_file.fd, part_path)
        part_file.close_fd()
        size = os.path.getsize(part_path)
        expected = file.size if file.size is not None else part_file.size_seen
        if size != expected:
            self.layout.remove(part_path)
            raise ArtifactCorrupt(f"{self.source.display} {file.path}: {size} bytes on disk, expected {expected}")
        if file.sha256 or file.md5 or file.git_sha1:
            digests = part_file.streamed_hash if part_file.streamed_hash is not None else hash_file(part_path, file)
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
        if part_file.multipart:
            self.layout.drop_part_state(file.path)
        self.tracker.file_done(size_delta=size if file.size is None else 0)
        log.debug("downloaded %s (%d bytes)", file.path, size)
