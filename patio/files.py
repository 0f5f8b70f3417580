"""Files that appear whole or not at all: the one atomic-write helper of Patio.

Write to a fresh name in the same directory (``O_EXCL``, so two writers never
share a temporary), fsync, ``os.replace``, fsync the directory: a crash leaves
the old content or the new, never a half (prometheus_client's
``write_to_textfile`` pattern).  Used for the LoRA state file and every
artifacts bookkeeping file (manifest, journal, part state, source marker).

Blocking: call from worker threads.  Raises ``OSError``; callers translate it.
"""

import os

# What tempfile.mkstemp does (a fresh name, O_EXCL), without importing tempfile,
# which pulls shutil, bz2, lzma and random into a sidecar that needs none of them.
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable; file systems that refuse fsync on directories are tolerated."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # the rename itself is still atomic
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` whole or not at all (file ``mode`` for a new file)."""
    folder, base = os.path.split(path)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, _TMP_FLAGS, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder or ".")
