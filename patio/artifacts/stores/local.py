"""Local artifacts: absolute paths, ``file://`` and ``pvc://`` under a configured mount root.

A ``pvc://a/b`` path resolves under the root and cannot leave it: ``..``,
absolute components and symlinks pointing outside are all refused, checked on
the real (symlink-resolved) path.  The engine reads these in place; when a
copy is asked for (``patio download --model-uri pvc://...``) ``LocalSource``
feeds the same fetch engine as the remote stores.
"""

import os
from typing import List, Optional

from patio.artifacts.errors import ArtifactNotFound
from patio.artifacts.fetch.listing import RemoteFile
from patio.artifacts.fetch.manifest import META_DIR, within
from patio.artifacts.uri import SourceSpec
from patio.errors import BadRequest


def resolve_local(spec: SourceSpec, pvc_root: str, param: str = "model_uri") -> str:
    """The real path a local spec names; it must exist."""
    if spec.pvc:
        if any(segment == ".." for segment in spec.path.split("/")):
            raise BadRequest(f"{param} {spec.display} must not contain '..'", param=param)
        root = os.path.realpath(pvc_root)
        real = os.path.realpath(os.path.join(root, spec.path))
        if not within(root, real):
            raise BadRequest(f"{param} {spec.display} resolves outside the PVC root {pvc_root}", param=param)
    else:
        if not os.path.isabs(spec.path):
            raise BadRequest(f"{param} local path must be absolute, got {spec.path!r}", param=param)
        real = os.path.realpath(spec.path)
    if not os.path.exists(real):
        raise ArtifactNotFound(f"{spec.display} does not exist")
    return real


class _FileStream:
    def __init__(self, path: str, start: int) -> None:
        self._handle = open(path, "rb")  # closed by close()
        self._handle.seek(start)
        self.offset = start
        self._remaining: Optional[int] = None

    def limit(self, count: int) -> "_FileStream":
        self._remaining = count
        return self

    def read(self, size: int) -> bytes:
        if self._remaining is not None:
            size = min(size, self._remaining)
            if size <= 0:
                return b""
        data = self._handle.read(size)
        if self._remaining is not None:
            self._remaining -= len(data)
        return data

    def close(self) -> None:
        self._handle.close()


class LocalSource:
    """Copy a local file or directory tree (symlinks inside are followed only if they stay inside)."""

    def __init__(self, root: str, display: str) -> None:
        self.root = root
        self.display = display

    def list_files(self) -> List[RemoteFile]:
        if os.path.isfile(self.root):
            st = os.stat(self.root)
            return [RemoteFile(path=os.path.basename(self.root), size=st.st_size, etag=_version(st), ref=self.root)]
        files = []
        for folder, dirs, names in os.walk(self.root, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not (folder == self.root and d == META_DIR))
            for name in sorted(names):
                full = os.path.join(folder, name)
                real = os.path.realpath(full)
                if not within(self.root, real) or not os.path.isfile(real):
                    continue
                st = os.stat(real)
                rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                files.append(RemoteFile(path=rel, size=st.st_size, etag=_version(st), ref=real))
        return files

    def open(self, file: RemoteFile, start: int, end: Optional[int]) -> _FileStream:
        try:
            stream = _FileStream(file.ref, start)
        except OSError as exc:
            raise ArtifactNotFound(f"{self.display} {file.path}: {exc.strerror}") from None
        return stream.limit(end - start + 1) if end is not None else stream

    def close(self) -> None:
        return None


def _version(st: os.stat_result) -> str:
    return f"{st.st_size}-{st.st_mtime_ns}"
