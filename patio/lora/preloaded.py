"""Adapters an engine loaded at its own start (llama.cpp's ``--lora``), kept as Patio's records.

For engines whose adapters are fixed at start and listed (``EngineSpec.static_lora`` with an
``adapters_path``), what the engine serves shows in ``GET /v1/lora_adapters`` and the residency
metrics (``patio_lora_adapter_info{origin="engine"}``) like any adapter Patio loaded, and counts
as confirmed for routers.  Looked at whenever the engine's health comes up (its first state and
every flip: a restarted llama-server may hold other files).  Records are added, never removed:
an adapter the engine stops serving is found by the reconcile loop (its reload is refused).
"""

import asyncio
import logging
import time
from typing import Optional

from patio.errors import PatioError
from patio.lora.manager import LoraManager
from patio.lora.records import LOADED, Adapter
from patio.tasks import cancel_and_wait
from patio.validate import ADAPTER_NAME

log = logging.getLogger("patio.lora")

ORIGIN_ENGINE = "engine"


class PreloadedAdapters:
    def __init__(self, manager: LoraManager) -> None:
        self.manager = manager
        self._task: Optional["asyncio.Task[int]"] = None

    def on_engine_health(self, up: bool) -> None:
        """A health-watch subscriber (on the event loop): one look at a time."""
        if up and (self._task is None or self._task.done()):
            self._task = asyncio.ensure_future(self.adopt())

    async def adopt(self) -> int:
        """Record what the engine serves and Patio does not hold; returns how many were added."""
        manager = self.manager
        try:
            served = await manager.engine_adapters()
        except PatioError as exc:
            log.info("cannot list the engine's preloaded adapters: %s", exc.message)
            return 0
        added = 0
        for name, path in sorted(served.items()):
            if ADAPTER_NAME.fullmatch(name) is None:
                log.warning("engine adapter %r (%s) left out: not a valid adapter name", name[:200], path)
                continue
            async with manager.lock(name):
                current = manager.adapters.get(name)
                if current is not None:
                    if current.state == LOADED and current.path == path:
                        current.engine_confirmed = True
                    continue
                if len(manager.adapters) >= manager.settings.max_adapters:
                    log.warning("engine adapter %s left out: Patio already tracks --max-adapters", name)
                    break
                adapter = Adapter(name, path, path, state=LOADED, engine_confirmed=True, origin=ORIGIN_ENGINE)
                adapter.loaded_at = time.time()
                manager.track(adapter)
                added += 1
        if added:
            log.info("recorded %d adapter(s) the engine loaded at its start", added)
        return added

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
