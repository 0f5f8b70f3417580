"""The desired adapter set on disk: written whole or not at all (``patio.files.atomic_write``).

The file holds what a reload needs and no more (issue 13 row 15): name, the
path the engine loads, the source *without* userinfo or query string (a
presigned URL's signature is a credential), engine options, and whether the
downloaded copy is Patio's to delete.  Request ``credentials`` are never
written.  An adapter whose source lost its query is reloaded from its local
copy only.  Mode 0600.  Blocking: call from worker threads.
"""

import json
import os
from typing import Any, Dict, List

from patio.files import atomic_write

STATE_FILE = "lora-adapters.json"
STATE_VERSION = 1
# The state file lists adapters; a larger file is not ours.
MAX_STATE_BYTES = 4 * 1024 * 1024
# Written into the file, so whoever opens it knows what it holds and what it leaves out.
NOTE = (
    "Patio's desired LoRA adapters, reloaded when the engine loses them. Sources are stored without "
    "userinfo or query strings (signatures); download credentials are never stored; a source stored "
    "that way is reloaded from its local copy at path. engine_key (mode 0600 file) is the engine's own API "
    "key a caller gave for an adapter (AIBrix's additional_config api-key), for reloads after an engine restart. "
    "credentials_secret is the NAME of a mounted secret (never its values), read again when a reload downloads."
)


def write_desired(state_dir: str, adapters: List[Dict[str, Any]]) -> None:
    os.makedirs(state_dir, exist_ok=True)
    document = {"version": STATE_VERSION, "note": NOTE, "adapters": adapters}
    data = json.dumps(document, indent=1, sort_keys=True).encode("utf-8")
    atomic_write(os.path.join(state_dir, STATE_FILE), data, mode=0o600)


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
    try:
        data = json.loads(raw.decode("utf-8"))
    except RecursionError:  # nested past the parser's stack: not a file Patio wrote
        raise ValueError(f"{path} is nested too deeply to be a Patio adapter state file") from None
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION or not isinstance(data.get("adapters"), list):
        raise ValueError(f"{path} is not a Patio adapter state file")
    return [a for a in data["adapters"] if isinstance(a, dict) and isinstance(a.get("name"), str)]
