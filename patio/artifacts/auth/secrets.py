"""Credentials from a mounted Kubernetes secret, as AIBrix's runtime reads them.

AIBrix's controller sends ``credentials_secret: NAME``; its runtime
(``python/aibrix/aibrix/runtime/artifact_service.py`` ``_load_credentials``)
reads ``/var/run/secrets/aibrix/NAME/``: one file per key, the value stripped,
entries starting with ``..`` skipped (the kubelet's ``..data`` ->
``..2024_01_01_00_00_00.123`` indirection), and a plain file read as the key
``default``.  Patio reads the same layout, and also:

- the name is a plain name (no ``/``, no ``..``), so it is one entry of the directory;
- nothing outside the secret's own directory is read: every key is resolved
  (symlinks followed) and must stay inside ``NAME/``, as the kubelet's own links
  (``KEY -> ..data/KEY``, ``..data -> ..TIMESTAMP``) do; a key linking into
  another secret mounted beside it is refused;
- a missing secret, a file that is not readable text, or one larger than
  ``MAX_SECRET_FILE_BYTES`` is an error naming the secret and the key, never
  an empty set of credentials that fails later with a confusing 403.

Blocking (disk): call from a worker thread.  Values are never logged.
"""

import os
import re
import stat
from typing import Dict

from patio.errors import BadRequest, PatioError
from patio.validate import shown

# A secret's name: what AIBrix allows for adapter names (Kubernetes secret names fit in it).
SECRET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
# Largest value file read (a service-account JSON is ~2.4 KB; a CA bundle a few hundred KB).
MAX_SECRET_FILE_BYTES = 1024 * 1024
# Keys read from one secret at most.
MAX_SECRET_KEYS = 256


class SecretUnreadable(PatioError):
    """The secret exists but Patio cannot use it: an operator's mount problem, not the caller's."""

    status = 500
    error_type = "credentials_secret_unreadable"


def _within(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def read_secret(directory: str, name: str, param: str = "credentials_secret") -> Dict[str, str]:
    """The keys of secret ``name`` mounted under ``directory``."""
    if not isinstance(name, str) or not SECRET_NAME.match(name) or ".." in name:
        raise BadRequest(f"{param} must be a secret name matching {SECRET_NAME.pattern} (no '/', no '..')", param=param)
    root = os.path.realpath(directory)
    path = os.path.join(root, name)
    if not os.path.lexists(path):
        raise BadRequest(f"{param} {name!r}: no such secret mounted under {directory}", param=param)
    real = os.path.realpath(path)
    if not _within(root, real) or real == root:
        raise BadRequest(f"{param} {name!r} is a link that leaves {directory}; refusing to read it", param=param)
    if os.path.isfile(real):
        return {"default": _read_value(real, name, "default", param)}
    if not os.path.isdir(real):
        raise SecretUnreadable(f"{param} {name!r} is neither a file nor a directory", param=param)
    values: Dict[str, str] = {}
    try:
        entries = sorted(os.listdir(real))
    except OSError as exc:
        raise SecretUnreadable(f"{param} {name!r}: cannot list it: {exc.strerror or exc}", param=param) from None
    for entry in entries:
        if entry.startswith(".."):
            continue  # the kubelet's ..data and timestamped directories
        file_path = os.path.join(real, entry)
        target = os.path.realpath(file_path)
        if not _within(real, target) or target == real:
            raise BadRequest(
                f"{param} {name!r}: key {shown(entry)} is a link that leaves the secret's directory; "
                "refusing to read it",
                param=param,
            )
        try:
            mode = os.stat(target).st_mode
        except OSError as exc:
            raise SecretUnreadable(f"{param} {name!r}: key {entry!r}: {exc.strerror or exc}", param=param) from None
        if not stat.S_ISREG(mode):
            continue  # AIBrix reads regular files only (a FIFO would block the read)
        if len(values) >= MAX_SECRET_KEYS:
            raise SecretUnreadable(f"{param} {name!r} has more than {MAX_SECRET_KEYS} keys", param=param)
        values[entry] = _read_value(target, name, entry, param)
    return values


def _read_value(path: str, name: str, key: str, param: str) -> str:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise SecretUnreadable(
            f"{param} {name!r}: cannot read key {key!r}: {exc.strerror or exc}", param=param
        ) from None
    if len(raw) > MAX_SECRET_FILE_BYTES:
        raise SecretUnreadable(
            f"{param} {name!r}: key {key!r} is larger than {MAX_SECRET_FILE_BYTES} bytes", param=param
        )
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecretUnreadable(f"{param} {name!r}: key {key!r} is not UTF-8 text", param=param) from None
