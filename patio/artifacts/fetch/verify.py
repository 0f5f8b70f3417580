"""Integrity checks of a downloaded file against what the store declared (sha256, md5, git blob sha1)."""

import os
from typing import Any, Dict

from patio.artifacts.errors import ArtifactCorrupt
from patio.artifacts.fetch.listing import RemoteFile

# Bytes read per call when hashing a finished file.
HASH_CHUNK = 1024 * 1024


def hashers(file: RemoteFile) -> Dict[str, Any]:
    """Fresh hash objects for every digest the store declared for ``file``."""
    import hashlib  # with the first download, in its worker thread: hashlib loads OpenSSL (3+ MB resident)

    found: Dict[str, Any] = {}
    if file.sha256:
        found["sha256"] = hashlib.sha256()
    if file.md5:
        found["md5"] = hashlib.md5()
    if file.git_sha1:
        # A git blob id hashes a "blob <size>\0" header before the content.
        blob = hashlib.sha1()
        blob.update(b"blob %d\x00" % (file.size or 0))
        found["git_sha1"] = blob
    return found


def hash_file(path: str, file: RemoteFile) -> Dict[str, Any]:
    """Hash a finished file from disk (parts arrived out of order, or a run resumed)."""
    found = hashers(file)
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(HASH_CHUNK)
            if not chunk:
                break
            for hasher in found.values():
                hasher.update(chunk)
    return found


def verify(display: str, file: RemoteFile, digests: Dict[str, str], part_path: str) -> None:
    """Raise ``ArtifactCorrupt`` (and remove the bad copy) when a digest differs."""
    for name, want in (("sha256", file.sha256), ("md5", file.md5), ("git_sha1", file.git_sha1)):
        if want and digests.get(name) != want.lower():
            try:
                os.unlink(part_path)
            except OSError:
                pass
            raise ArtifactCorrupt(
                f"{display} {file.path}: {name} is {digests.get(name)}, the store declares {want.lower()}; "
                "the corrupt copy was removed"
            )
