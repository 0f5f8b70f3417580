"""LoRA adapters: load and unload, one name at a time, all or nothing, saved on disk.

Operations on one adapter name are serialised by a per-name lock
(``patio.lora.records.NamedLocks``); different names proceed in parallel.  A load
(``patio.lora.request.LoadRequest``, valid by construction) of a name already loaded
from the same source is a no-op; from another source, a 409 (or an in-place reload
when the engine supports it and the caller asked).  The engine's answer is mapped
faithfully (``patio.lora.engine_errors``): if the engine says no, the caller hears no.

The held set (adapters Patio holds as loaded) is saved under the state directory
(``patio.lora.held_set``); reconciliation (``patio.lora.reconcile``) loads again what
the engine lost.

Changes are all or nothing: an in-place reload that fails anywhere (download, engine
refusal, timeout, engine down) leaves the adapter that was loaded listed, saved and its
files intact; a new download goes to a directory of its own and the old one is deleted
only after the engine has taken the new one and the held set says so.
"""

import asyncio
import contextlib
import errno
import logging
import time
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Set, Tuple

from patio.artifacts.uri import display_uri
from patio.engines.base import DUPLICATE, NOT_FOUND, OK, Outcome
from patio.engines.client import EngineClient
from patio.errors import BadRequest, Conflict, PatioError
from patio.lora.engine_errors import outcome_error
from patio.lora.held_set import HeldSetFile
from patio.lora.inplace import unload_then_load
from patio.lora.records import (
    FAILED,
    LOADED,
    UNLOADING,
    Adapter,
    AdapterTable,
    FailedRecords,
    NamedLocks,
    restored,
    short,
)
from patio.lora.request import LoadRequest
from patio.lora.served import ModelList, ServedModels, parse_model_list
from patio.lora.settings import LoraSettings

if TYPE_CHECKING:  # pragma: no cover
    from patio.artifacts.adapters import AdapterArtifacts
    from patio.component import AppContext

log = logging.getLogger("patio.lora")


class LoraManager:
    def __init__(
        self,
        context: "AppContext",
        settings: LoraSettings,
        client: EngineClient,
        artifacts: Optional["AdapterArtifacts"] = None,
    ) -> None:
        self.context = context
        self.settings = settings
        self.client = client
        self.artifacts = artifacts  # downloads remote sources; None: only local paths
        self.adapters = AdapterTable()
        self._held = HeldSetFile(settings.state_dir)
        self._locks = NamedLocks()
        self._failed = FailedRecords(self.adapters, settings.max_adapters)
        self._chores: Set["asyncio.Task[None]"] = set()
        self._persist_lock = asyncio.Lock()
        # What the engine lists, as readiness reads it (patio.lora.readiness).
        self.served = ServedModels(self._probe_models, context.core.ready_cache_ttl)
        registry = context.registry
        registry.gauge(
            "patio_lora_adapters_loaded",
            "Adapters Patio holds as loaded.",
            func=lambda: float(sum(1 for a in self.adapters.values() if a.state == LOADED)),
        )
        self.operations = registry.counter(
            "patio_lora_operations_total", "LoRA operations by kind and result.", ("op", "result")
        )
        self._durations = registry.histogram(
            "patio_lora_operation_duration_seconds",
            "Time LoRA operations took, engine call included.",
            ("op",),
            buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 1800.0),
        )

    # -- helpers ----------------------------------------------------------------------
    def lock(self, name: str) -> "contextlib.AbstractAsyncContextManager[None]":
        """``async with manager.lock(name):`` serialises every change to one adapter."""
        return self._locks.hold(name)

    async def persist(self, *names: str, scrub: bool = False) -> None:
        """Save what changed for ``names`` (``patio.lora.held_set``: one journal line each, or the
        whole set when it is small, the journal long, or ``scrub``: an engine key must leave the disk)."""
        async with self._persist_lock:
            store = self._held
            try:
                if store.needs_snapshot(len(self.adapters), scrub):
                    held = sorted((a for a in self.adapters.values() if a.state == LOADED), key=lambda a: a.name)
                    await self.context.run_blocking(store.write_snapshot, [a.persisted() for a in held])
                else:
                    changes = {}
                    for name in names:
                        record = self.adapters.get(name)
                        changes[name] = record.persisted() if record is not None and record.state == LOADED else None
                    await self.context.run_blocking(store.append, changes)
            except OSError as exc:
                # The engine has already acted; say so, and say why the set was not saved.
                raise PatioError(
                    f"the engine applied the change but Patio could not save its adapter state in "
                    f"{self.settings.state_dir}: {exc.strerror or exc}",
                    status=507 if exc.errno == errno.ENOSPC else 500,
                    error_type="state_not_saved",
                ) from None

    async def engine_call(self, op: str, payload: Mapping[str, Any], key: Optional[str] = None) -> Outcome:
        """One LoRA call to the engine (``op``: load or unload), within its timeout."""
        timeout = self.settings.load_timeout if op == "load" else self.settings.unload_timeout
        return await self.context.run_engine(self.client.lora, op, payload, timeout, key)

    def _list_models(self) -> ModelList:
        """Blocking: the engine's model list.  Raises PatioError."""
        # An engine that demands a key Patio was not given answers to an adapter's own key.
        key = self.adapters.any_engine_key()
        return parse_model_list(self.client.models_raw(self.settings.models_timeout, key), self.client.spec.models_path)

    async def engine_models(self) -> ModelList:
        """The engine's base models and adapters (``GET /v1/models``).  Raises PatioError."""
        listing = await self.context.run_engine_query(self._list_models)
        self.served.note(listing)
        return listing

    async def engine_adapters(self) -> Dict[str, str]:
        """The engine's adapters: name -> the path it serves each from."""
        if self.client.spec.static_lora:
            # Adapters fixed at the engine's start: listed by a route of its own (llama.cpp's
            # /lora-adapters; /v1/models names none there) or nowhere (TGI, Triton).
            key = self.adapters.any_engine_key()
            return await self.context.run_engine_query(self.client.adapters, self.settings.models_timeout, key)
        return (await self.engine_models()).adapters

    async def _probe_models(self) -> ModelList:
        # Readiness asks: the latency-critical pool, as the engine health probe (one at a time).
        return await self.context.run_blocking(self._list_models)

    async def engine_adapters_or_empty(self) -> Dict[str, str]:
        try:
            return await self.engine_adapters()
        except PatioError:
            return {}

    async def _confirmed(self, name: str, path: str) -> bool:
        try:
            return (await self.engine_adapters()).get(name) == path
        except PatioError:
            return False

    def _record(self, op: str, result: str, started: float) -> None:
        self.operations.inc(op, result)
        self._durations.observe(time.monotonic() - started, op)

    # -- failed records ---------------------------------------------------------------
    def _failed_record(self, adapter: Adapter, message: str) -> None:
        """Mark ``adapter`` failed and listed, within the bounds on failed records."""
        self._drop(self._failed.add(adapter, message))

    def _prune_failed(self, room_for: int = 0) -> None:
        self._drop(self._failed.prune(room_for))

    def _drop(self, evicted: List[Adapter]) -> None:
        """Forget the download status of evicted records; delete what their downloads left."""
        service = self.artifacts
        if service is None or not evicted:
            return
        for record in evicted:
            service.forget(record.name)
        remote = [r for r in evicted if r.remote and r.path]
        if remote:
            # What a failed download left on disk goes too, under each name's lock.
            task = asyncio.ensure_future(self._drop_files(remote))
            self._chores.add(task)
            task.add_done_callback(self._chores.discard)

    async def _drop_files(self, records: List[Adapter]) -> None:
        service = self.artifacts
        if service is None:
            return
        for record in records:
            async with self.lock(record.name):
                if record.name in self.adapters:
                    continue  # loaded again meanwhile: its directory may be in use
                try:
                    await service.cleanup(record.name, record.path)
                except PatioError as exc:
                    log.warning("could not delete the files of failed adapter %s: %s", record.name, exc.message)

    def listed(self) -> List[Adapter]:
        """Every record, by name, after the failed ones past their bounds went (what the API shows)."""
        self._prune_failed()
        return sorted(self.adapters.values(), key=lambda a: a.name)

    # -- operations ---------------------------------------------------------------------
    async def load(self, request: LoadRequest) -> Tuple[str, Adapter]:
        """Load (or confirm) an adapter; returns a message and the record.  Raises PatioError.

        All or nothing: when an adapter of this name is loaded, it stays loaded, listed and
        persisted, with its files, until the engine has confirmed the new one.
        """
        name, source = request.name, request.source
        started = time.monotonic()
        async with self.lock(name):
            existing = self.adapters.get(name)
            previous = existing if existing is not None and existing.state == LOADED else None
            if previous is not None and not request.load_inplace:
                if display_uri(previous.source) == display_uri(source):
                    self._record("load", "noop", started)
                    return f"LoRA adapter '{name}' is already loaded from {display_uri(source)}", previous
                self._record("load", "conflict", started)
                raise Conflict(
                    f"LoRA adapter '{name}' is already loaded from {display_uri(previous.source)}; unload it first"
                    + (" or set load_inplace" if "load_inplace" in self.client.spec.load_fields else ""),
                    param="lora_path",
                )
            if existing is None:
                self._prune_failed(room_for=1)
            if existing is None and len(self.adapters) >= self.settings.max_adapters:
                self._record("load", "refused", started)
                raise Conflict(
                    f"Patio already tracks {len(self.adapters)} adapters (--max-adapters); unload one first",
                    param="lora_name",
                    error_type="too_many_adapters",
                )
            adapter = Adapter(
                name,
                source,
                "",
                remote=request.remote,
                extra=request.engine_options(),
                cleanup_local=request.cleanup_local,
                origin=request.origin,
                engine_key=request.engine_key,
                credentials_secret=request.credentials_secret,
            )
            if previous is None:
                self.adapters[name] = adapter  # listed as "loading" while it downloads and loads
            try:
                await self._load_into_engine(adapter, previous, request)
            except BaseException as exc:  # cancellation included: the old adapter must survive it
                message = exc.message if isinstance(exc, PatioError) else f"interrupted ({type(exc).__name__})"
                if previous is not None:
                    self.adapters[name] = previous
                    previous.last_error = short(f"in-place reload from {display_uri(source)} failed: {message}")
                    await self._discard(adapter, keep=previous)
                else:
                    self._failed_record(adapter, message)
                self._record("load", "failed", started)
                raise
            adapter.state, adapter.loaded_at, adapter.last_error = LOADED, time.time(), None
            adapter.load_seconds = time.monotonic() - started
            self.adapters[name] = adapter
            self._failed.discard(name)
            # The engine's own answer confirms it (or its listing did, after a failed call): asking
            # /v1/models again here cost the size of the set per load.  Reconciliation re-checks.
            adapter.engine_confirmed = True
            scrub = previous is not None and bool(previous.engine_key) and previous.engine_key != adapter.engine_key
            await self.persist(name, scrub=scrub)
            if previous is not None:
                # Only now, with the engine on the new directory and the held set saying so.
                await self._discard(previous, keep=adapter)
            self._record("load", "success", started)
            log.info("loaded LoRA adapter %s from %s", name, display_uri(source))
            return f"LoRA adapter '{name}' loaded", adapter

    async def _load_into_engine(self, adapter: Adapter, previous: Optional[Adapter], request: LoadRequest) -> str:
        """Fetch (if remote) and ask the engine to load; sets ``adapter.path``.  Raises PatioError."""
        name, path = adapter.name, adapter.source
        if adapter.remote:
            service = self.artifacts
            if service is None:
                raise BadRequest("remote adapter sources are not enabled in this Patio", param="lora_path")
            # The one call into the artifacts seam.  The directory the engine serves now is never
            # written: a new download goes beside it.
            path = await service.materialize(
                name,
                adapter.source,
                None,
                current=previous.path if previous else None,
                in_use=True,
                plan=request.fetch,
            )
        adapter.path = path
        # vLLM keeps load_inplace on the adapter and reads its files at every step (patio.lora.inplace).
        swap = request.load_inplace and unload_then_load(self.client.spec.name, self.context.engine.version)
        if swap and previous is not None:
            await self._swap(adapter, previous)
        else:
            await self._engine_load(adapter, inplace=request.load_inplace and not swap)
        return path

    async def _engine_load(self, adapter: Adapter, inplace: bool = False) -> None:
        """One engine load of ``adapter`` from ``adapter.path``, confirmed.  Raises PatioError."""
        name, path = adapter.name, adapter.path
        payload: Dict[str, Any] = {"lora_name": name, "lora_path": path, **adapter.extra}
        if inplace:
            payload["load_inplace"] = True
        try:
            outcome = await self.engine_call("load", payload, adapter.engine_key)
        except PatioError:
            # A timeout or a dropped connection: the engine may have acted all the same.
            if not await self._confirmed(name, path):
                raise
            outcome = Outcome(OK, "the engine took it although the call failed", 200)
        if outcome.kind == DUPLICATE and (await self.engine_adapters_or_empty()).get(name) == path:
            # The engine already serves this very adapter (a retried load, or Patio restarted).
            outcome = Outcome(OK, "already loaded in the engine", outcome.status)
        if outcome.kind != OK:
            raise outcome_error(outcome, "load", name, self.client.spec.lora_hint)

    async def _swap(self, adapter: Adapter, previous: Adapter) -> None:
        """An in-place reload as unload then load (``patio.lora.inplace`` says why), all or nothing:
        when the engine does not take the new adapter, the old one is loaded again."""
        name = adapter.name
        if adapter.path != previous.path and (await self.engine_adapters_or_empty()).get(name) == adapter.path:
            return  # the engine serves the new adapter already (a retry after a timeout): no gap
        try:
            outcome = await self.engine_call("unload", {"lora_name": name}, previous.engine_key)
        except PatioError:
            # A timeout or a dropped connection: what the engine lists says what it did.
            try:
                served = (await self.engine_adapters()).get(name)
            except PatioError:
                served = previous.path
            if served == adapter.path != previous.path:
                return  # the engine serves the new adapter already
            if served is not None:
                raise
            outcome = Outcome(OK, "the engine unloaded it although the call failed", 200)
        if outcome.kind not in (OK, NOT_FOUND):
            raise outcome_error(outcome, "unload", name, self.client.spec.lora_hint)
        try:
            await self._engine_load(adapter)
        except PatioError as exc:
            try:
                await self._engine_load(previous)
            except PatioError as again:
                # Not serving now; the record stays loaded, so reconciliation loads it again.
                previous.engine_confirmed = False
                raise PatioError(
                    f"{exc.message}; loading the previous adapter again failed too ({again.message}): "
                    "reconciliation will retry",
                    status=exc.status,
                    error_type=exc.error_type,
                    param=exc.param,
                ) from None
            log.warning("in-place reload of %s refused (%s); the previous adapter is loaded again", name, exc.message)
            raise

    async def _discard(self, old: Adapter, keep: Adapter) -> None:
        """Delete the download directory of ``old`` unless ``keep`` (the adapter that stays) uses it."""
        service = self.artifacts
        if service is None or not old.remote or not old.path or old.path == keep.path:
            return
        try:
            await service.discard(old.name, old.path)
        except PatioError as exc:
            log.warning("could not delete %s (adapter %s): %s", old.path, old.name, exc.message)

    async def unload(
        self, name: str, cleanup_local: Optional[bool] = None, extra: Optional[Mapping[str, Any]] = None
    ) -> str:
        started = time.monotonic()
        async with self.lock(name):
            existing = self.adapters.get(name)
            was_loaded = existing is not None and existing.state == LOADED
            if existing is not None and was_loaded:
                existing.state = UNLOADING
            try:
                key = existing.engine_key if existing is not None else None
                outcome = await self.engine_call("unload", {"lora_name": name, **(extra or {})}, key)
            except PatioError:
                if existing is not None and was_loaded:
                    existing.state = LOADED
                self._record("unload", "failed", started)
                raise
            if outcome.kind == NOT_FOUND and was_loaded:
                # Patio held it as loaded but the engine had lost it: the caller's goal is met.
                outcome = Outcome(OK, "the engine no longer had it", outcome.status)
            if outcome.kind != OK:
                if existing is not None and was_loaded:
                    existing.state = LOADED
                if existing is not None and existing.state == FAILED:
                    del self.adapters[name]  # a failed load was never in the engine
                    self._failed.discard(name)
                self._record("unload", "failed", started)
                raise outcome_error(outcome, "unload", name, self.client.spec.lora_hint)
            self.adapters.pop(name, None)
            self._failed.discard(name)
            await self.persist(name, scrub=existing is not None and bool(existing.engine_key))
            cleanup = (
                existing is not None
                and existing.remote
                and (cleanup_local if cleanup_local is not None else existing.cleanup_local)
            )
            if cleanup:
                service = self.artifacts
                if service is not None:
                    assert existing is not None
                    await service.cleanup(name, existing.path)
            self._record("unload", "success", started)
            log.info("unloaded LoRA adapter %s", name)
            return f"LoRA adapter '{name}' unloaded" + (
                " (the engine no longer had it)" if outcome.message.startswith("the engine no") else ""
            )

    async def restore(self) -> None:
        """Take over the held set an earlier Patio saved (confirmed by the next reconcile)."""
        try:
            saved = await self.context.run_blocking(self._held.read)
        except (OSError, ValueError) as exc:
            log.error("cannot read the LoRA state in %s: %s", self.settings.state_dir, exc)
            return
        count = 0
        for item in saved:
            adapter = restored(item)
            if adapter is None:
                log.error("ignoring an unusable adapter entry in the LoRA state in %s", self.settings.state_dir)
                continue
            if adapter.name not in self.adapters:
                self.adapters[adapter.name] = adapter
                count += 1
        if count:
            log.info("restored %d LoRA adapter(s) from %s", count, self.settings.state_dir)

    async def stop(self) -> None:
        for chore in list(self._chores):
            chore.cancel()
        await self.served.stop()

    # -- for the adapters file (patio.lora.desired_sync); callers hold ``lock(name)`` ------
    def track(self, adapter: Adapter) -> None:
        """Record an adapter Patio made available without a load call (vLLM's resolver dir)."""
        self.adapters[adapter.name] = adapter

    def forget(self, name: str) -> None:
        self.adapters.pop(name, None)

    async def set_origin(self, name: str, origin: str) -> None:
        """Take over an adapter (loaded by an API call) for the adapters file, and save that."""
        adapter = self.adapters.get(name)
        if adapter is not None and adapter.origin != origin:
            adapter.origin = origin
            if adapter.state == LOADED:
                await self.persist(name)
