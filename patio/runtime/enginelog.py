"""Each engine's log: a file the engine appends to itself, kept below a named size.

The engine's stdout and stderr go straight to ``DIR/NAME.log`` (``O_APPEND``), never
through Patio, so an engine outlives a Patio that is killed.  The supervisor trims the
file the way logrotate's ``copytruncate`` does: past ``max_bytes`` the content moves to
``NAME.log.1`` (replacing the older copy) and the file is truncated in place; the
engine's appends continue at the new end.  Lines written between the copy and the
truncation are lost: the price of never signalling the engine.  At most about
``2 * max_bytes`` per engine is on disk.

Blocking: call from worker threads.
"""

import os
import re
import zlib

from patio.files import fsync_dir

# The tail read for an error message: the engine's last words are in its last few KiB.
TAIL_BYTES = 8 * 1024
# Longest excerpt of a log line put into last_error or an answer.
MAX_EXCERPT = 300
_COPY_CHUNK = 1024 * 1024
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def file_name(model_name: str) -> str:
    """A file name for ``model_name`` (which may hold "/"): readable, and unique by its hash."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "-", model_name)[:80]
    digest = f"{zlib.crc32(model_name.encode('utf-8')):08x}"  # zlib: hashlib would load OpenSSL
    return f"{readable}-{digest}.log"


def prepare(log_dir: str, model_name: str) -> str:
    os.makedirs(log_dir, mode=0o700, exist_ok=True)
    return os.path.join(log_dir, file_name(model_name))


def trim(path: str, max_bytes: int) -> bool:
    """Move the log aside once it is past ``max_bytes``; True when it was trimmed."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return False
    if size <= max_bytes:
        return False
    older = path + ".1"
    tmp = f"{older}.{os.getpid()}.tmp"
    with open(path, "rb") as source, open(tmp, "wb") as copy:
        while True:
            chunk = source.read(_COPY_CHUNK)
            if not chunk:
                break
            copy.write(chunk)
    os.chmod(tmp, 0o600)
    os.replace(tmp, older)
    os.truncate(path, 0)
    fsync_dir(os.path.dirname(path) or ".")
    return True


def last_line(path: str) -> str:
    """The engine's last non-empty log line, without control characters, at most MAX_EXCERPT long."""
    for candidate in (path, path + ".1"):
        try:
            with open(candidate, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - TAIL_BYTES))
                tail = handle.read().decode("utf-8", "replace")
        except OSError:
            continue
        for line in reversed(tail.splitlines()):
            clean = _CONTROL.sub("", _ANSI.sub("", line)).strip()
            if clean:
                return clean[:MAX_EXCERPT]
    return ""


def remove(path: str) -> None:
    for candidate in (path, path + ".1"):
        try:
            os.unlink(candidate)
        except OSError:
            pass
