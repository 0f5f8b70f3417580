"""Readiness that does not lie: the engine lists its model, and the adapters marked required are there.

An engine's ``/health`` says the process answers, not that it serves: the inference
gateway (GIE #558), llm-d (#300, #330) and production-stack (#619) routed to pods whose
health was 200 before the model, or the adapters the pod was meant for, could be served.
So ``/ready`` also asks the engine's ``GET /v1/models`` (``patio.lora.served``):

* ``model``: at least one base model is listed;
* ``adapters`` (with ``--adapters-file``): every adapter the file marks ``required`` is
  loaded, the engine listing it at Patio's path (or, in resolver mode, is in place in the
  resolver directory: vLLM loads it on the first request naming it).

Both answer within their share of ``--ready-timeout``, together with the engine health
check they wait for: the model list is reused for ``--ready-cache-ttl`` seconds, shared by
concurrent probes, and past the deadline the last known list is used.  While the engine's
own health check fails they have no say (it explains), so a down engine is one line.
An engine that refuses Patio's key for ``/v1/models`` (401/403: Patio was given none, as with
AIBrix, whose controller sends the engine key with each load) cannot be asked; that is
reported in the detail and does not hold the pod back; so is an engine without a model list
(``/v1/models`` answers 404: Triton, TGI builds without the OpenAI routes).
"""

import time
from typing import Optional, Sequence

from patio.component import ReadyCheck
from patio.engines.health import EngineHealth
from patio.lora.manager import LoraManager
from patio.lora.records import AVAILABLE, LOADED
from patio.lora.served import Seen

# Of the /ready deadline, these checks (engine health included) may use this share; the rest
# renders the answer.  The same share the engine health check gets (patio.api.core).
READY_SHARE = 0.8


async def engine_models(health: EngineHealth, manager: LoraManager, ready_timeout: float) -> Optional[Seen]:
    """The engine's model list as far as it is known within the deadline; None while the engine's
    own health check fails (that check explains)."""
    deadline = ready_timeout * READY_SHARE
    started = time.monotonic()
    healthy, _detail = await health.check(deadline=deadline)
    if not healthy:
        return None
    return await manager.served.current(deadline - (time.monotonic() - started))


def model_check(seen: Optional[Seen]) -> Optional[ReadyCheck]:
    if seen is None:
        return None
    listing = seen.listing
    if listing is None:
        if seen.refused:
            return ReadyCheck("model", True, f"not verified: {seen.note} (Patio has no engine key for it)")
        if seen.unlisted:
            return ReadyCheck("model", True, f"not verified: {seen.note} (the engine has no model list)")
        return ReadyCheck("model", False, f"the engine does not list its model yet: {seen.note}")
    if not listing.base:
        return ReadyCheck("model", False, "the engine's /v1/models lists no base model yet" + seen.note)
    return ReadyCheck("model", True, f"the engine serves {', '.join(sorted(listing.base))}{seen.note}")


def adapters_check(
    seen: Optional[Seen], manager: LoraManager, required: Sequence[str], file_read: bool
) -> Optional[ReadyCheck]:
    if seen is None:
        return None
    if not file_read:
        return ReadyCheck("adapters", False, "the adapters file has not been read yet")
    if not required:
        return None
    listing = seen.listing
    if listing is None and not (seen.refused or seen.unlisted):
        return ReadyCheck("adapters", False, f"cannot tell whether the required adapters are loaded: {seen.note}")
    missing = []
    for name in required:
        record = manager.adapters.get(name)
        if record is not None and record.state == AVAILABLE:
            continue  # in vLLM's resolver directory: loaded on the first request
        if record is not None and record.state == LOADED:
            if listing is None or listing.adapters.get(name) == record.path:
                continue
        missing.append(name)
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        return ReadyCheck("adapters", False, f"required adapters not loaded yet: {shown}")
    return ReadyCheck("adapters", True, f"{len(required)} required adapter(s) loaded{seen.note}")
