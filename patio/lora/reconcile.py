"""Healing: load again what the engine lost.

An engine restart drops every runtime-loaded adapter.  At start (after taking over
the held set an earlier Patio saved), every ``--lora-reconcile-interval`` seconds and
when the engine's health flips back to up, the engine's ``/v1/models`` is compared with
the adapters Patio holds as loaded, and each one missing is loaded again from its path
(downloaded again when the local copy is gone and the source can be fetched).

An engine that is asleep (``engine_asleep``, from the engine lifecycle) has dropped
nothing: its weights are offloaded, not its adapters, and a load would wake it or fail;
so while it sleeps nothing is reloaded.
"""

import asyncio
import logging
from typing import Callable, Optional

from patio.engines.base import DUPLICATE, OK
from patio.errors import PatioError
from patio.lora.manager import LoraManager
from patio.lora.records import LOADED, Adapter, short
from patio.tasks import cancel_and_wait

log = logging.getLogger("patio.lora")


class Reconciler:
    def __init__(self, manager: LoraManager, engine_asleep: Optional[Callable[[], bool]] = None) -> None:
        self.manager = manager
        self.settings = manager.settings
        self._asleep = engine_asleep
        self._wake = asyncio.Event()
        self._task: Optional[asyncio.Task[None]] = None
        self._engine_reachable: Optional[bool] = None
        self._slept = False  # the last round found the engine asleep (logged once per nap)
        self._reloads = manager.context.registry.counter(
            "patio_lora_reconcile_reloads_total", "Adapters loaded again because the engine had lost them."
        )

    async def reconcile(self, reason: str) -> int:
        """Load again what the engine lost; returns how many were reloaded."""
        if self._asleep is not None and self._asleep():
            if not self._slept:
                log.info("LoRA reconcile (%s): the engine is asleep; nothing is reloaded until it wakes", reason)
            self._slept = True
            return 0
        self._slept = False
        manager = self.manager
        adapters = manager.adapters
        # What the engine's listing can speak for: records loaded (at their path) before it was asked.
        asked = {n: (a, a.path) for n, a in adapters.items() if a.state == LOADED}
        try:
            engine = await manager.engine_adapters()
        except PatioError as exc:
            if self._engine_reachable is not False:
                log.info("LoRA reconcile (%s): engine unreachable: %s", reason, exc.message)
            self._engine_reachable = False
            for known in adapters.values():
                known.engine_confirmed = False
            return 0
        if self._engine_reachable is False:
            log.info("engine reachable again: reconciling LoRA adapters")
        self._engine_reachable = True
        reloads = 0
        for name in sorted(adapters):
            current = adapters.get(name)
            if current is None or current.state != LOADED:
                continue
            if engine.get(name) == current.path:
                current.engine_confirmed = True
                continue
            async with manager.lock(name):
                # Re-read under the lock: an API call may have changed it meanwhile.
                locked = adapters.get(name)
                if locked is None or locked.state != LOADED:
                    continue
                # The listing above may predate a load that finished meanwhile: then look again (once
                # per changed adapter; after an engine restart with 10,000 adapters, not 10,000 times).
                seen = asked.get(name)
                if seen is not None and seen[0] is locked and seen[1] == locked.path:
                    root = engine.get(name)
                else:
                    try:
                        root = (await manager.engine_adapters()).get(name)
                    except PatioError:
                        continue
                if root == locked.path:
                    locked.engine_confirmed = True
                    continue
                if await self._reload(locked, root):
                    reloads += 1
        return reloads

    def _failed(self, adapter: Adapter, message: str) -> None:
        adapter.engine_confirmed, adapter.last_error = False, short(message)
        self.manager.adapters.count_reload_failure(adapter.name)

    async def _reload(self, adapter: Adapter, engine_root: Optional[str]) -> bool:
        manager, name = self.manager, adapter.name
        if engine_root is not None:
            adapter.engine_confirmed = False
            adapter.last_error = f"the engine serves '{name}' from {engine_root}, not {adapter.path}"
            log.warning("LoRA reconcile: %s", adapter.last_error)
            return False
        path = adapter.path
        try:
            service = manager.artifacts
            if adapter.remote and service is not None:
                # The engine lost the adapter, so its directory is free to reuse or complete;
                # a source read back from the held set has no secrets left: local copy only.
                # A mounted secret is read again now (plan() raises a clear error if it is gone).
                plan = None
                if adapter.credentials_secret is not None:
                    plan = await service.plan(name, credentials_secret=adapter.credentials_secret)
                path = await service.materialize(
                    name, adapter.source, None, current=adapter.path, reuse_only=adapter.source_redacted, plan=plan
                )
            payload = {"lora_name": name, "lora_path": path, **adapter.extra}
            outcome = await manager.engine_call("load", payload, adapter.engine_key)
        except PatioError as exc:
            self._failed(adapter, exc.message)
            log.warning("LoRA reconcile: reloading %s failed: %s", name, exc.message)
            return False
        if outcome.kind not in (OK, DUPLICATE):
            self._failed(adapter, outcome.message)
            log.warning("LoRA reconcile: engine refused to reload %s: %s", name, outcome.message)
            return False
        adapter.engine_confirmed, adapter.last_error = True, None
        if path != adapter.path:
            adapter.path = path
            try:
                await manager.persist(name)
            except PatioError as exc:
                adapter.last_error = short(exc.message)
                log.error("LoRA reconcile: %s", exc.message)
        self._reloads.inc()
        manager.operations.inc("reload", "success")
        log.info("LoRA reconcile: reloaded %s (the engine had lost it)", name)
        return True

    def on_engine_health(self, up: bool) -> None:
        if up:
            self._wake.set()

    async def run(self) -> None:
        """The loop: take over the held set, then reconcile at start, every interval (if > 0),
        and when woken."""
        await self.manager.restore()
        interval = self.settings.reconcile_interval
        reason = "start"
        while True:
            try:
                await self.reconcile(reason)
            except Exception:  # the loop must survive anything one round does
                log.exception("LoRA reconcile failed")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=interval if interval > 0 else None)
                reason = "engine came back"
            except asyncio.TimeoutError:
                reason = "interval"
            self._wake.clear()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
