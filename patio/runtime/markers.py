"""AIBrix's served-model markers: which artifacts this node's weight cache holds.

AIBrix writes ``<cache>/.aibrix/served/<served-name>.json`` = ``{"model_name",
"artifact_url"}`` after an activation (``write_cache_marker``) and lists the
``artifact_url`` of every marker as the snapshot's ``cached_artifacts``
(``cached_artifacts``); its node-state reporter scans the same files to call a node
warm for a model.  Markers outlive the engine: the weights stay on disk.  A marker is
a locality hint: an unreadable one is skipped, never an error.  Patio writes the
artifact's display form (no credentials, no query string).

Blocking: call from worker threads.
"""

import json
import os
import re
from typing import List

from patio import jsontext
from patio.files import atomic_write

MARKER_DIR = (".aibrix", "served")
# Markers read for one snapshot; a cache with more is not a weight cache of this pod.
MAX_MARKERS = 1024
MAX_MARKER_BYTES = 64 * 1024


def marker_dir(cache_dir: str) -> str:
    return os.path.join(cache_dir, *MARKER_DIR)


def marker_name(model_name: str) -> str:
    # A served name may hold "/" (org/name): the HuggingFace cache's spelling keeps it one file.
    return re.sub(r"[^A-Za-z0-9._@+:-]", "--", model_name) + ".json"


def write_marker(cache_dir: str, model_name: str, artifact_url: str) -> str:
    folder = marker_dir(cache_dir)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, marker_name(model_name))
    body = json.dumps({"model_name": model_name, "artifact_url": artifact_url}).encode("utf-8")
    atomic_write(path, body, mode=0o644)
    return path


def cached_artifacts(cache_dir: str) -> List[str]:
    folder = marker_dir(cache_dir)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))[:MAX_MARKERS]
    except OSError:
        return []
    found = set()
    for name in names:
        try:
            with open(os.path.join(folder, name), "rb") as handle:
                data = jsontext.loads(handle.read(MAX_MARKER_BYTES))
        except (OSError, ValueError):
            continue
        url = data.get("artifact_url") if isinstance(data, dict) else None
        if isinstance(url, str) and url:
            found.add(url)
    return sorted(found)
