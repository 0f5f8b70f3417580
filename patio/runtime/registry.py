"""The crash-safe engine registry: what a Patio that restarts needs to adopt its engines.

One JSON file (``{"version": 1, "engines": [...]}``), replaced whole through
``patio.files.atomic_write`` (mode 0600, its directory 0700): a crash leaves the old set
or the new, never half of one (AIBrix ``EngineRegistry`` keeps the same promise).  It
holds no secret: a request's credentials stay in memory, and the artifact is kept in its
display form (no userinfo, no query string).  Kubernetes stays the desired-state
authority; the file is only the evidence needed to find the processes again.

Blocking: call from worker threads.
"""

import json
import logging
import os
from typing import Any, Dict, List, Sequence, Tuple

from patio import jsontext
from patio.files import atomic_write
from patio.runtime.records import ModelRecord, from_registry

log = logging.getLogger("patio.runtime")

VERSION = 1
# A registry larger than this is not one this Patio wrote (max models x a few KiB each).
MAX_REGISTRY_BYTES = 16 * 1024 * 1024


def load(path: str) -> Tuple[List[ModelRecord], int]:
    """The engines recorded at ``path`` and how many records were unusable (each is logged)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_REGISTRY_BYTES + 1)
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        log.warning("cannot read the engine registry %s: %s", path, exc.strerror or exc)
        return [], 1
    if len(raw) > MAX_REGISTRY_BYTES:
        log.warning("the engine registry %s is larger than %d bytes; ignored", path, MAX_REGISTRY_BYTES)
        return [], 1
    try:
        document = jsontext.loads(raw)
    except ValueError as exc:
        log.warning("the engine registry %s is not valid JSON (%s); ignored", path, exc)
        return [], 1
    if not isinstance(document, dict) or document.get("version") != VERSION:
        log.warning("the engine registry %s has no version %d document; ignored", path, VERSION)
        return [], 1
    engines = document.get("engines")
    if not isinstance(engines, list):
        log.warning("the engine registry %s has no engine list; ignored", path)
        return [], 1
    records: List[ModelRecord] = []
    invalid = 0
    seen = set()
    for index, item in enumerate(engines):
        try:
            record = from_registry(item)
        except ValueError as exc:
            log.warning("engine registry %s: record %d ignored: %s", path, index, exc)
            invalid += 1
            continue
        if record.model_name in seen:
            log.warning("engine registry %s: a second record for %s ignored", path, record.model_name)
            invalid += 1
            continue
        seen.add(record.model_name)
        records.append(record)
    return records, invalid


def save(path: str, engines: Sequence[Dict[str, Any]]) -> None:
    """Replace the registry with ``engines`` (``ModelRecord.to_registry()`` documents, built on the loop)."""
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    document = {"version": VERSION, "engines": list(engines)}
    atomic_write(path, json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8"), mode=0o600)
