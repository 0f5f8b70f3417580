"""llama.cpp's ``llama-server`` contract (``tools/server/README.md``, checked against a real server
in tests/test_llamacpp_peer.py).

- ``GET /health``: 200 ``{"status":"ok"}``; 503 ``{"error":{"code":503,"message":"Loading model",
  "type":"unavailable_error"}}`` while the model loads.
- ``GET /metrics``: only with ``--metrics`` (else 501): ``llamacpp:*`` families.
- LoRA: adapters are loaded at start only (``--lora FILE``, ``--lora-scaled FILE SCALE``);
  ``GET /lora-adapters`` lists them (``[{"id":0,"path":"...","scale":1.0}, ...]``) and
  ``POST /lora-adapters`` sets their global scales.  Each is named here by its file name without
  ``.gguf``.  A load of such an adapter under that name and path is already done; any other load,
  and every unload, is refused with the reason (409): llama-server cannot do it.
"""

import os
from typing import Any, Dict

from patio.engines.base import EngineSpec, classify_by_status, json_or_none

LORA_HINT = "llama-server loads adapters only at start: pass --lora FILE (or --lora-scaled FILE SCALE) and restart"


def adapter_name(path: str) -> str:
    """``/models/sql-lora.gguf`` -> ``sql-lora``."""
    base = os.path.basename(path.rstrip("/"))
    return base[: -len(".gguf")] if base.lower().endswith(".gguf") else base


def parse_adapters(text: str) -> Dict[str, str]:
    """``GET /lora-adapters`` -> name -> path; two files of one name are told apart by their id."""
    value: Any = json_or_none(text)
    if not isinstance(value, list):
        raise ValueError("not a list of adapters")
    out: Dict[str, str] = {}
    for item in value:
        if not (isinstance(item, dict) and isinstance(item.get("path"), str) and isinstance(item.get("id"), int)):
            raise ValueError(f"not an adapter: {str(item)[:100]!r}")
        name = adapter_name(item["path"])
        out[name if name not in out else f"{name}-{item['id']}"] = item["path"]
    return out


SPEC = EngineSpec(
    name="llamacpp",
    load_path="/lora-adapters",
    unload_path="/lora-adapters",
    models_path="/v1/models",
    load_fields=frozenset(),
    unload_fields=frozenset(),
    classify_body=classify_by_status,
    lora_hint=LORA_HINT,
    static_lora=True,
    adapters_path="/lora-adapters",
    parse_adapters=parse_adapters,
)
