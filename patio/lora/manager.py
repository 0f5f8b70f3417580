"""LoRA adapters: what Patio holds, how it changes, and how it heals.

Operations on one adapter name are serialised by a per-name lock; different
names proceed in parallel.  A load of a name already loaded from the same
source is a no-op; from another source, a 409 (or an in-place reload when the
engine supports it and the caller asked).  The engine's answer is mapped
faithfully: if the engine says no, the caller hears no.

The desired set (adapters Patio holds as loaded) is persisted under the state
directory.  Reconciliation (at start, every interval, and when the engine comes
back) reads the engine's ``/v1/models`` and loads again what the engine lost:
an engine restart drops runtime-loaded adapters.
"""

import asyncio
import errno
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

from patio.artifacts.uri import display_uri
from patio.engines.base import (
    DUPLICATE,
    INTERNAL,
    INVALID,
    NO_LORA_ROUTES,
    NOT_FOUND,
    OK,
    UNAUTHORIZED,
    UNAVAILABLE,
    Outcome,
)
from patio.engines.client import EngineClient
from patio.errors import BadRequest, Conflict, EngineError, EngineUnavailable, NotFound, PatioError
from patio.lora.settings import LoraSettings
from patio.lora.state import read_desired, write_desired

if TYPE_CHECKING:  # pragma: no cover
    from patio.app import AppContext

log = logging.getLogger("patio.lora")

LOADING, LOADED, UNLOADING, FAILED = "loading", "loaded", "unloading", "failed"
# URI schemes that name a remote artifact Patio must download first.
REMOTE_SCHEMES = ("s3://", "gs://", "tos://", "obs://", "hf://", "huggingface://", "http://", "https://", "pvc://")


@dataclass
class Adapter:
    name: str
    source: str  # what the caller asked for: a local path or a URI
    path: str  # what the engine loads
    remote: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)  # engine-specific fields kept for reloads (pinned)
    cleanup_local: bool = True
    state: str = LOADING
    last_error: Optional[str] = None
    loaded_at: Optional[float] = None
    engine_confirmed: bool = False

    def persisted(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "path": self.path,
            "remote": self.remote,
            "extra": self.extra,
            "cleanup_local": self.cleanup_local,
            "loaded_at": self.loaded_at,
        }


def outcome_error(outcome: Outcome, op: str, name: str, lora_hint: str) -> PatioError:
    """An engine refusal as the error the caller hears."""
    kind, message = outcome.kind, outcome.message
    if kind == DUPLICATE:
        return Conflict(message, param="lora_name")
    if kind == NOT_FOUND:
        return NotFound(message, param="lora_path" if op == "load" else "lora_name")
    if kind == INVALID:
        return BadRequest(f"engine rejected the {op}: {message}")
    if kind == UNAUTHORIZED:
        return EngineError(
            f"engine refused Patio's credentials ({outcome.status}): {message}; "
            "set INFERENCE_ENGINE_API_KEY to the engine's API key",
            engine_status=outcome.status,
            error_type="engine_unauthorized",
        )
    if kind == NO_LORA_ROUTES:
        return EngineError(
            f"engine has no runtime LoRA API ({lora_hint})",
            engine_status=outcome.status,
            error_type="engine_lora_disabled",
        )
    if kind == UNAVAILABLE:
        return EngineUnavailable(f"engine unavailable ({outcome.status}): {message}")
    assert kind == INTERNAL, kind
    return EngineError(f"engine failed to {op} {name} ({outcome.status}): {message}", engine_status=outcome.status)


class LoraManager:
    def __init__(self, context: "AppContext", settings: LoraSettings, client: EngineClient) -> None:
        self.context = context
        self.settings = settings
        self.client = client
        self.adapters: Dict[str, Adapter] = {}
        self._locks: Dict[str, asyncio.Lock] = {}
        self._persist_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: Optional[asyncio.Task[None]] = None
        self._engine_reachable: Optional[bool] = None
        registry = context.registry
        registry.gauge(
            "patio_lora_adapters_loaded",
            "Adapters Patio holds as loaded.",
            func=lambda: float(sum(1 for a in self.adapters.values() if a.state == LOADED)),
        )
        self._ops = registry.counter(
            "patio_lora_operations_total", "LoRA operations by kind and result.", ("op", "result")
        )
        self._durations = registry.histogram(
            "patio_lora_operation_duration_seconds",
            "Time LoRA operations took, engine call included.",
            ("op",),
            buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 1800.0),
        )
        self._reloads = registry.counter(
            "patio_lora_reconcile_reloads_total", "Adapters loaded again because the engine had lost them."
        )

    # -- helpers ----------------------------------------------------------------------
    def lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def _artifacts(self) -> Any:
        return self.context.services.get("adapter_artifacts")

    def is_remote(self, source: str) -> bool:
        service = self._artifacts()
        if service is not None:
            return bool(service.is_remote(source))
        return source.lower().startswith(REMOTE_SCHEMES)

    async def _persist(self) -> None:
        async with self._persist_lock:
            desired = [a.persisted() for a in sorted(self.adapters.values(), key=lambda a: a.name) if a.state == LOADED]
            try:
                await self.context.run_blocking(write_desired, self.settings.state_dir, desired)
            except OSError as exc:
                # The engine has already acted; say so, and say why the set was not saved.
                raise PatioError(
                    f"the engine applied the change but Patio could not save its adapter state in "
                    f"{self.settings.state_dir}: {exc.strerror or exc}",
                    status=507 if exc.errno == errno.ENOSPC else 500,
                    error_type="state_not_saved",
                ) from None

    async def _engine_call(self, op: str, payload: Mapping[str, Any]) -> Outcome:
        timeout = self.settings.load_timeout if op == "load" else self.settings.unload_timeout
        return await self.context.run_blocking(self.client.lora, op, payload, timeout)

    async def engine_adapters(self) -> Dict[str, str]:
        return await self.context.run_blocking(self.client.adapters, self.settings.models_timeout)

    async def _confirmed(self, name: str, path: str) -> bool:
        try:
            return (await self.engine_adapters()).get(name) == path
        except PatioError:
            return False

    def _record(self, op: str, result: str, started: float) -> None:
        self._ops.inc(op, result)
        self._durations.observe(time.monotonic() - started, op)

    # -- operations ---------------------------------------------------------------------
    async def load(
        self,
        name: str,
        source: str,
        extra: Mapping[str, Any],
        *,
        load_inplace: bool = False,
        credentials: Optional[Mapping[str, Any]] = None,
        cleanup_local: bool = True,
    ) -> Tuple[str, Adapter]:
        """Load (or confirm) an adapter; returns a message and the record.  Raises PatioError."""
        started = time.monotonic()
        async with self.lock(name):
            existing = self.adapters.get(name)
            if existing is not None and existing.state == LOADED and not load_inplace:
                if existing.source == source:
                    self._record("load", "noop", started)
                    return f"LoRA adapter '{name}' is already loaded from {display_uri(source)}", existing
                self._record("load", "conflict", started)
                raise Conflict(
                    f"LoRA adapter '{name}' is already loaded from {display_uri(existing.source)}; unload it first"
                    + (" or set load_inplace" if "load_inplace" in self.client.spec.load_fields else ""),
                    param="lora_path",
                )
            remote = self.is_remote(source)
            path = source
            if remote:
                service = self._artifacts()
                if service is None:
                    raise BadRequest("remote adapter sources are not enabled in this Patio", param="lora_path")
                adapter = Adapter(name, source, "", remote=True, extra=dict(extra), cleanup_local=cleanup_local)
                self.adapters[name] = adapter
                try:
                    path = await service.materialize(name, source, credentials)
                except PatioError as exc:
                    adapter.state, adapter.last_error = FAILED, exc.message
                    self._record("load", "failed", started)
                    raise
            adapter = Adapter(name, source, path, remote=remote, extra=dict(extra), cleanup_local=cleanup_local)
            previous = existing if existing is not None and existing.state == LOADED else None
            self.adapters[name] = adapter
            payload: Dict[str, Any] = {"lora_name": name, "lora_path": path, **extra}
            if load_inplace:
                payload["load_inplace"] = True
            try:
                outcome = await self._engine_call("load", payload)
            except PatioError as exc:
                adapter.state, adapter.last_error = FAILED, exc.message
                self._record("load", "failed", started)
                raise
            if outcome.kind == DUPLICATE and (await self.engine_adapters_or_empty()).get(name) == path:
                # The engine already serves this very adapter (a retried load, or Patio restarted).
                outcome = Outcome(OK, "already loaded in the engine", outcome.status)
            if outcome.kind != OK:
                error = outcome_error(outcome, "load", name, self.client.spec.lora_hint)
                if previous is not None:
                    self.adapters[name] = previous  # a refused in-place reload leaves the old one loaded
                else:
                    adapter.state, adapter.last_error = FAILED, error.message
                self._record("load", "failed", started)
                raise error
            adapter.state, adapter.loaded_at, adapter.last_error = LOADED, time.time(), None
            adapter.engine_confirmed = await self._confirmed(name, path)
            await self._persist()
            self._record("load", "success", started)
            log.info("loaded LoRA adapter %s from %s", name, display_uri(source))
            return f"LoRA adapter '{name}' loaded", adapter

    async def engine_adapters_or_empty(self) -> Dict[str, str]:
        try:
            return await self.engine_adapters()
        except PatioError:
            return {}

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
                outcome = await self._engine_call("unload", {"lora_name": name, **(extra or {})})
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
                self._record("unload", "failed", started)
                raise outcome_error(outcome, "unload", name, self.client.spec.lora_hint)
            self.adapters.pop(name, None)
            await self._persist()
            cleanup = (
                existing is not None
                and existing.remote
                and (cleanup_local if cleanup_local is not None else existing.cleanup_local)
            )
            if cleanup:
                service = self._artifacts()
                if service is not None:
                    await service.cleanup(name)
            self._record("unload", "success", started)
            log.info("unloaded LoRA adapter %s", name)
            return f"LoRA adapter '{name}' unloaded" + (
                " (the engine no longer had it)" if outcome.message.startswith("the engine no") else ""
            )

    # -- healing ------------------------------------------------------------------------
    async def restore(self) -> None:
        """Take over the desired set persisted by an earlier Patio (confirmed by the next reconcile)."""
        try:
            saved = await self.context.run_blocking(read_desired, self.settings.state_dir)
        except (OSError, ValueError) as exc:
            log.error("cannot read the LoRA state in %s: %s", self.settings.state_dir, exc)
            return
        for item in saved:
            name = item["name"]
            if name in self.adapters:
                continue
            self.adapters[name] = Adapter(
                name=name,
                source=str(item.get("source") or item.get("path")),
                path=str(item.get("path")),
                remote=bool(item.get("remote")),
                extra=dict(item.get("extra") or {}),
                cleanup_local=bool(item.get("cleanup_local", True)),
                state=LOADED,
                loaded_at=item.get("loaded_at"),
                engine_confirmed=False,
            )
        if saved:
            log.info("restored %d LoRA adapter(s) from %s", len(saved), self.settings.state_dir)

    async def reconcile(self, reason: str) -> int:
        """Load again what the engine lost; returns how many were reloaded."""
        try:
            engine = await self.engine_adapters()
        except PatioError as exc:
            if self._engine_reachable is not False:
                log.info("LoRA reconcile (%s): engine unreachable: %s", reason, exc.message)
            self._engine_reachable = False
            for known in self.adapters.values():
                known.engine_confirmed = False
            return 0
        if self._engine_reachable is False:
            log.info("engine reachable again: reconciling LoRA adapters")
        self._engine_reachable = True
        reloads = 0
        for name in sorted(self.adapters):
            current = self.adapters.get(name)
            if current is None or current.state != LOADED:
                continue
            if engine.get(name) == current.path:
                current.engine_confirmed = True
                continue
            async with self.lock(name):
                # Re-read under the lock: an API call may have changed it meanwhile.
                locked = self.adapters.get(name)
                if locked is None or locked.state != LOADED:
                    continue
                # The snapshot above may predate a load that finished meanwhile: look again.
                try:
                    root = (await self.engine_adapters()).get(name)
                except PatioError:
                    continue
                if root == locked.path:
                    locked.engine_confirmed = True
                    continue
                if await self._reload(locked, root):
                    reloads += 1
        return reloads

    async def _reload(self, adapter: Adapter, engine_root: Optional[str]) -> bool:
        name = adapter.name
        if engine_root is not None:
            adapter.engine_confirmed = False
            adapter.last_error = f"the engine serves '{name}' from {engine_root}, not {adapter.path}"
            log.warning("LoRA reconcile: %s", adapter.last_error)
            return False
        try:
            if adapter.remote and self._artifacts() is not None:
                adapter.path = await self._artifacts().materialize(name, adapter.source, None)
            outcome = await self._engine_call("load", {"lora_name": name, "lora_path": adapter.path, **adapter.extra})
        except PatioError as exc:
            adapter.engine_confirmed, adapter.last_error = False, exc.message
            log.warning("LoRA reconcile: reloading %s failed: %s", name, exc.message)
            return False
        if outcome.kind not in (OK, DUPLICATE):
            adapter.engine_confirmed, adapter.last_error = False, outcome.message
            log.warning("LoRA reconcile: engine refused to reload %s: %s", name, outcome.message)
            return False
        adapter.engine_confirmed, adapter.last_error = True, None
        self._reloads.inc()
        self._ops.inc("reload", "success")
        log.info("LoRA reconcile: reloaded %s (the engine had lost it)", name)
        return True

    def on_engine_health(self, up: bool) -> None:
        if up:
            self._wake.set()

    async def run(self) -> None:
        """The reconcile loop: at start, every interval (if > 0), and when woken."""
        await self.restore()
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
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def views(self) -> List[Dict[str, Any]]:
        service = self._artifacts()
        out = []
        for adapter in sorted(self.adapters.values(), key=lambda a: a.name):
            view: Dict[str, Any] = {
                "name": adapter.name,
                "source": display_uri(adapter.source),  # no userinfo or signed query in answers
                "path": adapter.path,
                "state": adapter.state,
                "last_error": adapter.last_error,
                "loaded_at": adapter.loaded_at,
                "engine_confirmed": adapter.engine_confirmed,
                "remote": adapter.remote,
            }
            if adapter.extra:
                view["options"] = dict(adapter.extra)
            if service is not None and adapter.remote:
                view["download"] = service.status(adapter.name)
            out.append(view)
        return out
