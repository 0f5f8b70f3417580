"""One file of a download on its way to disk: its ranged parts, its ``NAME.part``, its resume record.

A file larger than the part size is cut into ranged parts that land at their offsets in
one sparse ``NAME.part``; after each part the data is fsync'd, then the record of the
parts on disk (``Layout.write_part_state``) says so, so a re-run continues from there
provided the remote object is the same (size, ETag, part size).  A smaller file is one
part and is fetched again whole after a failure.  Nothing here talks to the network.
"""

import os
import threading
from typing import Any, List, Optional, Set, Tuple

from patio.artifacts.fetch.listing import RemoteFile
from patio.artifacts.fetch.manifest import Layout, write_error

Part = Tuple[int, Optional[int]]  # first and last byte (inclusive); last None: to the end


class PartFile:
    """One file being fetched: its parts, its open ``.part`` descriptor, its resume state."""

    def __init__(self, file: RemoteFile, layout: Layout, part_size: int) -> None:
        self.file = file
        self.layout = layout
        self.lock = threading.Lock()
        self.fd: Optional[int] = None
        self.parts: List[Part] = []
        size = file.size
        if size is None or not file.ranged or size <= part_size:
            self.parts = [(0, None if size is None else size - 1)]
            self.part_size = 0
        else:
            self.part_size = part_size
            self.parts = [(start, min(size, start + part_size) - 1) for start in range(0, size, part_size)]
        self.done: Set[int] = set()
        self.resumed_bytes = 0
        self.streamed_hash: Optional[Any] = None  # hashlib objects fed in order (single part only)
        self.size_seen = 0

    @property
    def path(self) -> str:
        """Where the bytes go until the file is verified: ``NAME.part``."""
        return self.layout.part(self.file.path)

    @property
    def multipart(self) -> bool:
        return len(self.parts) > 1

    def load_resume_state(self) -> None:
        """Finished parts of an earlier run, if that run was for this very object."""
        if not self.multipart:
            return
        state = self.layout.read_part_state(self.file.path)
        if (
            state
            and state.get("size") == self.file.size
            and state.get("etag") == self.file.etag
            and state.get("part_size") == self.part_size
            and os.path.isfile(self.path)
            and os.path.getsize(self.path) == self.file.size
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

    def mark_done(self, index: int) -> bool:
        """Part ``index`` is on disk; True when it was the last one.

        Until then, progress is made durable: the data first (fsync), then the record that
        says it is there.
        """
        with self.lock:
            self.done.add(index)
            if len(self.done) == len(self.parts):
                return True
            if self.multipart:
                assert self.fd is not None
                fsync(self.fd, self.path)
                self.layout.write_part_state(
                    self.file.path,
                    {
                        "path": self.file.path,
                        "size": self.file.size,
                        "etag": self.file.etag,
                        "part_size": self.part_size,
                        "done": sorted(self.done),
                    },
                )
            return False

    def open_fd(self) -> int:
        with self.lock:
            if self.fd is not None:
                return self.fd
            path = self.path
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


def pwrite_all(fd: int, data: bytes, offset: int, path: str) -> None:
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


def fsync(fd: int, path: str) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
