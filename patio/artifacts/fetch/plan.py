"""What one run must do, decided before anything is written: the files to fetch, keep and remove.

A file already complete in the directory (named by the manifest or the journal, with the
same size and version marker as the listing, a regular file of that size on disk) is
kept; every other listed file is fetched; a file of an earlier download that the listing
no longer names is stale and removed at the end.  ``force`` fetches everything again.
Reads the directory, writes nothing.
"""

import os
import stat
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from patio.artifacts.errors import LocalWriteError
from patio.artifacts.fetch.listing import RemoteFile
from patio.artifacts.fetch.manifest import Entry, Layout
from patio.artifacts.fetch.progress import human_bytes


@dataclass(frozen=True)
class Plan:
    keep: List[Entry]  # complete on disk and unchanged remotely
    todo: List[RemoteFile]  # to fetch (or to finish, from a part-state record)
    stale: List[Entry]  # on disk from an earlier download, no longer listed
    manifest_present: bool  # the directory was complete before this run

    @property
    def changes(self) -> bool:
        """True when the directory is not already the complete copy this run makes."""
        return bool(self.todo) or not self.manifest_present or bool(self.stale)


def make_plan(layout: Layout, listed: Sequence[RemoteFile], files: Sequence[RemoteFile], force: bool) -> Plan:
    """``files`` are the listed files accepted for download (``listing.accepted``)."""
    previous = layout.manifest_entries()
    known: Dict[str, Entry] = {} if force else {**previous, **layout.journal_entries()}
    keep: List[Entry] = []
    todo: List[RemoteFile] = []
    for f in files:
        entry = known.get(f.path)
        if entry is not None and _local_matches(layout, entry, f):
            keep.append(entry)
        else:
            todo.append(f)
    listed_paths = {f.path for f in listed}
    stale = [e for p, e in {**previous, **known}.items() if p not in listed_paths]
    return Plan(keep=keep, todo=todo, stale=stale, manifest_present=bool(previous))


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


def check_free_space(layout: Layout, needed: int) -> None:
    """Refuse a download the device cannot hold, before its first byte (a full disk mid-way wastes it all)."""
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
