"""vLLM's filesystem resolver directory, as Patio fills it.  Blocking: call from worker threads.

vLLM's ``lora_filesystem_resolver`` (vllm/plugins/lora_resolvers/filesystem_resolver.py)
serves a request for ``model: NAME`` by loading ``VLLM_LORA_RESOLVER_CACHE_DIR/NAME`` when
that directory holds an ``adapter_config.json`` with ``peft_type: LORA`` and the served
base model -- no load call.  So an adapter must appear there whole or not at all:
downloads land in ``DIR/.patio-staging/NAME`` and are renamed into place (one
``rename`` on one filesystem).  Removal renames the directory out of vLLM's sight
first, then deletes it.

Patio only touches directories it made: each carries ``.patio/source`` (the
artifacts layer's marker, the display form of the URI).  Anything else in the
directory belongs to someone else and is left alone.

Several Patios may fill one directory (a shared volume across replicas): each
name's fill, install and removal run under an exclusive ``flock`` on
``DIR/.patio-staging/NAME.lock``.  Without it two processes wrote into the same
``.patio-staging/NAME`` at once, one's preparation deleting the other's download
when their sources differed, and one could rename a copy into vLLM's sight while
the other still wrote into it; with it the second filler waits and finds the
first one's complete copy instead of fetching its own.
"""

import fcntl
import logging
import os
import stat
from typing import Iterable, List, Optional

from patio.artifacts.fetch.manifest import META_DIR, Layout, atomic_write, fsync_dir, write_error
from patio.errors import BadRequest, Conflict
from patio.lora.adapter_config import CONFIG_FILE, MAX_CONFIG_BYTES

log = logging.getLogger("patio.lora.desired")

STAGING = ".patio-staging"
TRASH = ".patio-trash"
SOURCE_MARKER = "source"  # the artifacts layer's marker file name (patio/artifacts/adapters.py)


def staging_dir(resolver_dir: str) -> str:
    return os.path.join(resolver_dir, STAGING)


class UnsafeDirectory(Conflict):
    """Patio's staging or trash directory is not a plain directory of its own."""

    error_type = "unsafe_directory"


def own_directory(path: str) -> str:
    """``path`` as a real directory owned by this process's user, made (0700) if missing.

    Downloads are written below staging and deleted below trash: a symlink planted there
    (``DIR/.patio-staging -> /elsewhere``) would send an in-progress download, or a delete,
    outside the resolver directory, so anything but Patio's own directory is refused.
    """
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise write_error(path, exc) from None
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        what = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a directory of Patio's own"
        raise UnsafeDirectory(f"{path} is {what}; refusing to stage or delete adapters through it")
    return path


def ready_for_downloads(resolver_dir: str) -> None:
    """Blocking: staging and trash are Patio's own directories (raises ``UnsafeDirectory``)."""
    own_directory(staging_dir(resolver_dir))
    own_directory(os.path.join(resolver_dir, TRASH))


LOCK_SUFFIX = ".lock"


def try_lock(resolver_dir: str, name: str) -> Optional[int]:
    """Blocking: the held lock of ``name`` (a file descriptor), or None when another process holds it.

    ``name`` is already a checked adapter name (no ``/``, no leading dot).
    """
    target_of(resolver_dir, name)
    path = os.path.join(own_directory(staging_dir(resolver_dir)), name + LOCK_SUFFIX)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd


def unlock(fd: int) -> None:
    os.close(fd)  # closing the descriptor releases the flock


def _locked_elsewhere(resolver_dir: str, name: str) -> bool:
    fd = try_lock(resolver_dir, name)
    if fd is None:
        return True
    unlock(fd)
    return False


def target_of(resolver_dir: str, name: str) -> str:
    """``DIR/NAME``, refusing names that would leave DIR (the file model already checks the pattern)."""
    root = os.path.realpath(resolver_dir)
    target = os.path.join(root, name)
    if os.path.dirname(target) != root or name.startswith("."):
        raise BadRequest(f"adapter name {name!r} does not name a directory inside {resolver_dir}")
    return target


def marker_of(path: str) -> Optional[str]:
    """The source a directory of ours holds, or None (not ours, or absent)."""
    if os.path.islink(path):
        return None
    try:
        with open(os.path.join(path, META_DIR, SOURCE_MARKER), encoding="utf-8") as handle:
            return handle.read(8192)
    except OSError:
        return None


def holds(resolver_dir: str, name: str, display: str) -> bool:
    """True when ``DIR/NAME`` is a complete copy of ``display`` that Patio put there."""
    target = target_of(resolver_dir, name)
    return marker_of(target) == display and Layout(target).read_manifest() is not None


def read_adapter_config(staged: str) -> Optional[bytes]:
    """The staged copy's ``adapter_config.json`` (at most one byte past the bound), or None."""
    try:
        fd = os.open(os.path.join(staged, CONFIG_FILE), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(MAX_CONFIG_BYTES + 1)


def rewrite_adapter_config(staged: str, original: bytes, fixed: bytes) -> None:
    """Make the staged copy name the served base model; the original is kept in ``.patio/``."""
    atomic_write(os.path.join(staged, META_DIR, CONFIG_FILE + ".orig"), original)
    atomic_write(os.path.join(staged, CONFIG_FILE), fixed)


def install(resolver_dir: str, name: str, staged: str) -> str:
    """Move a complete download from staging into vLLM's sight, replacing an older copy."""
    target = target_of(resolver_dir, name)
    if os.path.islink(target):
        raise BadRequest(f"{target} is a symlink; Patio does not write through it")
    if os.path.lexists(target) and marker_of(target) is None:
        raise BadRequest(f"{target} exists and was not made by Patio; remove it or rename the adapter")
    try:
        if os.path.lexists(target):
            _discard(resolver_dir, target)
        os.rename(staged, target)
        fsync_dir(resolver_dir)
    except OSError as exc:
        raise write_error(target, exc) from None
    return target


def remove(resolver_dir: str, name: str) -> bool:
    """Take ``DIR/NAME`` out of vLLM's sight and delete it; False when there was nothing of ours."""
    target = target_of(resolver_dir, name)
    if marker_of(target) is None:
        return False
    try:
        _discard(resolver_dir, target)
    except OSError as exc:
        raise write_error(target, exc) from None
    return True


def ours(resolver_dir: str) -> List[str]:
    """Names of the adapter directories Patio made (left over, say, by an earlier Patio)."""
    try:
        names = sorted(os.listdir(resolver_dir))
    except FileNotFoundError:
        return []
    return [n for n in names if not n.startswith(".") and marker_of(os.path.join(resolver_dir, n)) is not None]


def tidy(resolver_dir: str, keep: Iterable[str]) -> None:
    """At start: empty the trash, and drop staged downloads of names no longer wanted."""
    import shutil  # worker thread only

    try:
        ready_for_downloads(resolver_dir)
    except (UnsafeDirectory, OSError) as exc:
        # Never list or delete through a planted link; the adapters' own applies report it.
        log.error("resolver dir %s: %s", resolver_dir, getattr(exc, "message", exc))
        return
    shutil.rmtree(os.path.join(resolver_dir, TRASH), ignore_errors=True)
    staging = staging_dir(resolver_dir)
    wanted = set(keep)
    try:
        names = os.listdir(staging)
    except OSError:
        return
    for name in names:
        path = os.path.join(staging, name)
        owner = name.split("~", 1)[0]
        if name.endswith(LOCK_SUFFIX) or owner in wanted or os.path.islink(path):
            continue
        if _locked_elsewhere(resolver_dir, owner):
            continue  # another Patio sharing the directory is filling it right now
        shutil.rmtree(path, ignore_errors=True)


def _discard(resolver_dir: str, target: str) -> None:
    import shutil  # worker thread only: shutil pulls in bz2 and lzma

    trash = own_directory(os.path.join(resolver_dir, TRASH))
    moved = os.path.join(trash, f"{os.path.basename(target)}.{os.getpid()}.{os.urandom(4).hex()}")
    os.rename(target, moved)  # vLLM no longer sees it, whatever the delete below does
    shutil.rmtree(moved, ignore_errors=True)
