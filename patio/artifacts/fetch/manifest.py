"""On-disk bookkeeping of a download directory: manifest, journal, part state.

    DIR/.patio/manifest.json       written last, atomically: the whole set is complete and verified
    DIR/.patio/journal.jsonl       one line per file finished since the manifest went away
    DIR/.patio/partial/<id>.json   which ranged parts of a big file are already on disk

A crash leaves either the old manifest or none; files named in the journal are
whole (they were renamed into place after fsync), so a re-run skips them.
Nothing here talks to the network.
"""

import errno
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional

from patio import files
from patio.artifacts.errors import LocalWriteError
from patio.files import fsync_dir

__all__ = ["atomic_write", "fsync_dir"]  # the shared helpers, as fetch and the adapter seam use them

META_DIR = ".patio"
MANIFEST = "manifest.json"
JOURNAL = "journal.jsonl"
PARTIAL = "partial"
FORMAT = 1
# A manifest or journal larger than this is not ours (a model has thousands of files, not millions).
MAX_META_BYTES = 64 * 1024 * 1024
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True)
class Entry:
    """What we know about one finished local file."""

    path: str
    size: int
    etag: str = ""
    sha256: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {"path": self.path, "size": self.size, "etag": self.etag}
        if self.sha256:
            data["sha256"] = self.sha256
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Optional["Entry"]:
        try:
            path, size = data["path"], data["size"]
        except (KeyError, TypeError):
            return None
        if not isinstance(path, str) or not isinstance(size, int):
            return None
        etag = data.get("etag") or ""
        sha256 = data.get("sha256")
        return cls(path=path, size=size, etag=str(etag), sha256=sha256 if isinstance(sha256, str) else None)


def write_error(path: str, exc: OSError) -> LocalWriteError:
    """The one message for a failed local write, naming the file and the cause."""
    if exc.errno in _DISK_FULL:
        why = "no space left on the device" if exc.errno != errno.EFBIG else "file size limit exceeded"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        why = "permission denied"
    elif exc.errno == errno.EROFS:
        why = "read-only file system"
    elif exc.errno == errno.ENOTDIR:
        why = "a parent is not a directory"
    else:
        why = exc.strerror or repr(exc)
    return LocalWriteError(f"cannot write {path}: {why} (errno {exc.errno})")


def within(root: str, path: str) -> bool:
    """True when ``path`` is ``root`` or below it (both already real paths)."""
    root = root.rstrip(os.sep) or os.sep
    return path == root or path.startswith(root + os.sep) or root == os.sep


def atomic_write(path: str, data: bytes) -> None:
    """``patio.files.atomic_write`` (mode 0644: the engine reads these files) with the artifacts' error."""
    try:
        files.atomic_write(path, data, mode=0o644)
    except OSError as exc:
        raise write_error(path, exc) from None


class Layout:
    """Paths of one download directory and its bookkeeping."""

    def __init__(self, local_dir: str) -> None:
        self.root = os.path.abspath(local_dir)
        self.meta = os.path.join(self.root, META_DIR)
        self.manifest = os.path.join(self.meta, MANIFEST)
        self.journal = os.path.join(self.meta, JOURNAL)
        self.partial = os.path.join(self.meta, PARTIAL)

    def target(self, relpath: str) -> str:
        return os.path.join(self.root, *relpath.split("/"))

    def part(self, relpath: str) -> str:
        return self.target(relpath) + ".part"

    def inside(self, path: str) -> bool:
        """False when a symlink inside the directory leads ``path`` out of it."""
        return within(os.path.realpath(self.root), os.path.realpath(path))

    def check_inside(self, path: str) -> None:
        """Refuse to write where a symlink inside the directory leads out of it."""
        if not self.inside(path):
            raise LocalWriteError(f"cannot write {path}: a symlink leads outside {self.root}")

    def remove(self, path: str) -> None:
        """Delete a file of ours; never through a symlink that leads outside."""
        if os.path.islink(path) or not self.inside(path):
            return
        try:
            os.unlink(path)
        except OSError:
            pass

    def part_state(self, relpath: str) -> str:
        import hashlib  # first download only: hashlib loads OpenSSL (3+ MB resident)

        return os.path.join(self.partial, hashlib.sha1(relpath.encode("utf-8")).hexdigest() + ".json")

    def ensure(self) -> None:
        for path in (self.root, self.meta):
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise write_error(path, exc) from None
            if not os.path.isdir(path) or os.path.islink(path):
                raise LocalWriteError(f"cannot write {path}: not a directory")

    # --- manifest ---

    def read_manifest(self) -> Optional[Dict[str, Any]]:
        data = _read_json(self.manifest)
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), list):
            return None
        return data

    def manifest_entries(self) -> Dict[str, Entry]:
        data = self.read_manifest()
        return _entries(data["files"]) if data else {}

    def write_manifest(self, source: str, entries: Iterable[Entry]) -> Dict[str, Any]:
        files = sorted(entries, key=lambda e: e.path)
        data = {
            "format": FORMAT,
            "complete": True,
            "source": source,
            "files": [e.to_json() for e in files],
            "file_count": len(files),
            "bytes": sum(e.size for e in files),
            "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write(self.manifest, json.dumps(data, indent=1, ensure_ascii=False).encode("utf-8"))
        return data

    def drop_manifest(self) -> None:
        try:
            os.unlink(self.manifest)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise write_error(self.manifest, exc) from None
        fsync_dir(self.meta)

    # --- journal ---

    def journal_entries(self) -> Dict[str, Entry]:
        try:
            with open(self.journal, "rb") as handle:
                raw = handle.read(MAX_META_BYTES)
        except OSError:
            return {}
        entries: Dict[str, Entry] = {}
        for line in raw.split(b"\n"):
            try:
                entry = Entry.from_json(json.loads(line))
            except ValueError:
                continue  # a line torn by a crash
            if entry is not None:
                entries[entry.path] = entry
        return entries

    def reset_journal(self, entries: Iterable[Entry]) -> None:
        lines = "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in entries)
        atomic_write(self.journal, lines.encode("utf-8"))

    def append_journal(self, entry: Entry) -> None:
        """Called under the job's lock; O_APPEND + fsync, so a crash tears at most the last line."""
        line = (json.dumps(entry.to_json(), ensure_ascii=False) + "\n").encode("utf-8")
        try:
            fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise write_error(self.journal, exc) from None

    def drop_journal(self) -> None:
        for path in (self.journal,):
            try:
                os.unlink(path)
            except OSError:
                pass

    # --- partial state of multi-part files ---

    def read_part_state(self, relpath: str) -> Optional[Dict[str, Any]]:
        data = _read_json(self.part_state(relpath))
        return data if isinstance(data, dict) and data.get("path") == relpath else None

    def write_part_state(self, relpath: str, state: Mapping[str, Any]) -> None:
        try:
            os.makedirs(self.partial, exist_ok=True)
        except OSError as exc:
            raise write_error(self.partial, exc) from None
        atomic_write(self.part_state(relpath), json.dumps(state).encode("utf-8"))

    def drop_part_state(self, relpath: str) -> None:
        try:
            os.unlink(self.part_state(relpath))
        except OSError:
            pass

    def drop_partial_dir(self) -> None:
        try:
            for name in os.listdir(self.partial):
                os.unlink(os.path.join(self.partial, name))
            os.rmdir(self.partial)
        except OSError:
            pass


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_META_BYTES)
        return json.loads(raw)
    except (OSError, ValueError):
        return None


def _entries(items: List[Any]) -> Dict[str, Entry]:
    entries: Dict[str, Entry] = {}
    for item in items:
        entry = Entry.from_json(item) if isinstance(item, dict) else None
        if entry is not None:
            entries[entry.path] = entry
    return entries
