"""The desired adapter set on disk: written whole or not at all.

tmp file in the same directory -> fsync -> ``os.replace`` -> fsync the directory
(prometheus_client's write_to_textfile pattern), so a crash leaves the old set
or the new one.  Blocking: call from worker threads.
"""

import json
import os
from typing import Any, Dict, List

STATE_FILE = "lora-adapters.json"
STATE_VERSION = 1
# The state file lists adapters; a larger file is not ours.
MAX_STATE_BYTES = 4 * 1024 * 1024


def write_desired(state_dir: str, adapters: List[Dict[str, Any]]) -> None:
    os.makedirs(state_dir, exist_ok=True)
    data = json.dumps({"version": STATE_VERSION, "adapters": adapters}, indent=1, sort_keys=True).encode("utf-8")
    # What tempfile.mkstemp does (a fresh name, O_EXCL, mode 0600), without importing
    # tempfile, which pulls shutil, bz2, lzma and random into a sidecar that needs none.
    tmp = os.path.join(state_dir, f".lora-adapters.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, os.path.join(state_dir, STATE_FILE))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_desired(state_dir: str) -> List[Dict[str, Any]]:
    """The saved set; an absent file is an empty set; a corrupt one raises ValueError."""
    path = os.path.join(state_dir, STATE_FILE)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return []
    if len(raw) > MAX_STATE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_STATE_BYTES} bytes")
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION or not isinstance(data.get("adapters"), list):
        raise ValueError(f"{path} is not a Patio adapter state file")
    return [a for a in data["adapters"] if isinstance(a, dict) and isinstance(a.get("name"), str)]
