"""What a source lists, and the checks every listing passes before anything is written.

A ``Source`` (S3, GCS, HF, HTTP, local) turns a URI into ``RemoteFile`` rows and opens
byte ranges of them; names are validated here so no store can make Patio write
outside the target directory.
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional, Protocol, Sequence

from patio.artifacts.errors import ArtifactError, ArtifactNotFound
from patio.artifacts.fetch.manifest import META_DIR

# A listing with more files than this is refused (a model is thousands of files at most).
MAX_FILES = 200_000


@dataclass(frozen=True)
class RemoteFile:
    """One file of a listing.  ``path`` is relative, '/'-separated, already validated."""

    path: str
    size: Optional[int]  # None: unknown until the body ends (HTTP without Content-Length)
    etag: str = ""  # version marker: a new value means the remote changed
    sha256: Optional[str] = None  # hex; verified when set (HF LFS)
    md5: Optional[str] = None  # hex; verified when set (GCS)
    git_sha1: Optional[str] = None  # hex git blob id; verified when set (HF regular files)
    ranged: bool = True  # the server honours Range, so parts and resume work
    ref: Any = field(default=None, compare=False)  # the source's own handle (key, URL)


class Stream(Protocol):
    offset: int  # the byte position the body starts at (0 when the server ignored Range)

    def read(self, size: int) -> bytes: ...

    def close(self) -> None: ...


class Source(Protocol):
    display: str  # for logs and errors: no credentials

    def list_files(self) -> List[RemoteFile]: ...

    def open(self, file: RemoteFile, start: int, end: Optional[int]) -> Stream:
        """GET bytes ``start..end`` (inclusive; ``end`` None = to the end).  Raises the error family,
        ``Transient`` for retryable failures, ``ObjectChanged`` when the object is not the listed one."""
        ...

    def close(self) -> None: ...


def validate_relpath(path: str, display: str) -> str:
    """A remote name as a safe relative path, or an error: no '..', no absolute, no empty segments."""
    if not path or "\x00" in path or path.startswith("/"):
        raise ArtifactError(f"{display}: refusing unsafe file name {path!r}")
    segments = path.split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise ArtifactError(f"{display}: refusing unsafe file name {path!r}")
    if segments[0] == META_DIR:
        raise ArtifactError(f"{display}: file name {path!r} collides with Patio's bookkeeping directory {META_DIR}/")
    return path


def suffix_allowed(path: str, suffixes: Sequence[str]) -> bool:
    if not suffixes:
        return True
    name = path.rsplit("/", 1)[-1]
    return any(name.endswith("." + s.lstrip(".")) or name == s for s in suffixes)


def check_layout(files: Sequence[RemoteFile], display: str) -> None:
    """Refuse listings that cannot be laid out as files: 'a' and 'a/b', or 'a' and 'a.part'."""
    names = {f.path for f in files}
    for f in files:
        parts = f.path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in names:
                raise ArtifactError(f"{display}: {'/'.join(parts[:i])!r} is both a file and a directory")
        if f.path + ".part" in names:
            raise ArtifactError(f"{display}: {f.path!r} and {f.path + '.part'!r} cannot both be downloaded")


def accepted(listed: Sequence[RemoteFile], display: str, suffixes: Sequence[str]) -> List[RemoteFile]:
    """The files of a listing to download, after every check; an error for a listing to refuse whole.

    Too many files, an unsafe name, a name that cannot be laid out, an empty listing and a
    filter that leaves nothing are each refused before anything is written.
    """
    if len(listed) > MAX_FILES:
        raise ArtifactError(f"{display}: {len(listed)} files is more than the limit of {MAX_FILES}")
    for f in listed:
        validate_relpath(f.path, display)
    check_layout(listed, display)
    files = [f for f in listed if suffix_allowed(f.path, suffixes)]
    if not listed:
        raise ArtifactNotFound(f"{display}: no files found (an empty listing is not a download)")
    if not files:
        raise ArtifactNotFound(
            f"{display}: none of the {len(listed)} files ends with an allowed suffix ({', '.join(suffixes)})"
        )
    return files
