"""kvcached's shared-memory segment: read a model's KV accounting, write its limit.

The layout is AIBrix's (``read_kv_segment``/``write_kv_limit`` in
``aibrix/runtime/model_runtime.py``, after kvcached's ``MemInfoStruct``): the file
``/dev/shm/<ipc_name>`` starts with three little-endian int64 values, ``total_size``,
``used_size``, ``prealloc_size``.  A limit is written into ``total_size`` under an
exclusive ``flock`` on the file, the lock the engine takes to rewrite the struct, so
neither write is lost.  A missing segment means the engine runs without kvcached (or
has not built it yet): reads answer ``None``, a limit is refused.

Blocking: call from worker threads.
"""

import fcntl
import os
import struct
import time
from typing import Optional, Tuple

HEADER = struct.Struct("<3q")
LIMIT = struct.Struct("<q")
# The engine holds the lock only while it rewrites 24 bytes; held this long, something is
# stuck and the write fails rather than wait (AIBrix KV_LIMIT_LOCK_TIMEOUT_SECONDS).
LOCK_TIMEOUT = 5.0
_LOCK_POLL = 0.01


class SegmentMissing(Exception):
    """No kvcached segment under this name."""


class SegmentLocked(Exception):
    """The segment's lock stayed held for LOCK_TIMEOUT seconds."""


def segment_path(shm_dir: str, ipc_name: str) -> str:
    if not ipc_name or "/" in ipc_name or ipc_name in (".", ".."):
        raise SegmentMissing(f"no kvcached segment name ({ipc_name!r})")
    return os.path.join(shm_dir, ipc_name)


def read_segment(shm_dir: str, ipc_name: str) -> Optional[Tuple[int, int, int]]:
    """``(total, used, prealloc)`` bytes, or ``None`` when there is no complete segment."""
    try:
        path = segment_path(shm_dir, ipc_name)
        with open(path, "rb") as handle:
            raw = handle.read(HEADER.size)
    except (OSError, SegmentMissing):
        return None
    if len(raw) < HEADER.size:
        return None
    total, used, prealloc = HEADER.unpack(raw)
    return total, used, prealloc


def write_limit(shm_dir: str, ipc_name: str, limit_bytes: int, lock_timeout: float = LOCK_TIMEOUT) -> None:
    """Set ``total_size`` to ``limit_bytes``; ``SegmentMissing`` or ``SegmentLocked`` leave it unchanged."""
    path = segment_path(shm_dir, ipc_name)
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise SegmentMissing(f"no kvcached segment {path}") from None
    try:
        if os.fstat(fd).st_size < HEADER.size:
            raise SegmentMissing(f"{path} is not a kvcached segment (shorter than {HEADER.size} bytes)")
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SegmentLocked(f"kvcached segment {path} stayed locked for {lock_timeout:g}s") from None
                time.sleep(_LOCK_POLL)
        os.pwrite(fd, LIMIT.pack(limit_bytes), 0)
    finally:
        os.close(fd)  # closing releases the flock
