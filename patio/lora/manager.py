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

Changes are all or nothing (issue 13 rows 6, 7): an in-place reload that fails
anywhere (download, engine refusal, timeout, engine down) leaves the adapter that
was loaded listed, persisted and its files intact; a new download goes to a
directory of its own and the old one is deleted only after the engine has taken
the new one and the state file says so.

Memory is bounded whatever callers send (row 8): records of failed loads are
kept for ``FAILED_RECORD_TTL`` seconds, at most ``MAX_FAILED_RECORDS`` of them
(oldest evicted first); per-name locks exist only while held or awaited.
Loaded adapters are never evicted: the engine and the state file need them.
"""

import asyncio
import contextlib
import errno
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Dict, List, Mapping, Optional, Set, Tuple

from patio.artifacts.auth.secrets import SECRET_NAME
from patio.artifacts.uri import display_uri, is_materialized
from patio.engines.base import (
    BAD_ANSWER,
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
from patio.lora.state import StateFile
from patio.validate import ADAPTER_NAME, check_local_or_uri, check_name, check_source, is_clean

if TYPE_CHECKING:  # pragma: no cover
    from patio.artifacts.adapters import AdapterArtifacts
    from patio.component import AppContext

log = logging.getLogger("patio.lora")

LOADING, LOADED, UNLOADING, FAILED = "loading", "loaded", "unloading", "failed"
# Who asked for an adapter: an API call, the adapters file, or the file through vLLM's resolver dir.
ORIGIN_API, ORIGIN_FILE, ORIGIN_RESOLVER = "api", "file", "resolver"
# Failed-load records kept for the listing; a client looping over fresh names must not grow memory.
MAX_FAILED_RECORDS = 256
# Seconds a failed-load record stays listed: long enough for an operator to read last_error.
FAILED_RECORD_TTL = 3600.0
# last_error is cut to this many characters (an engine can answer with a long body).
MAX_ERROR_CHARS = 1000


def _short(message: str) -> str:
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 1] + "…"


class NamedLocks:
    """One ``asyncio.Lock`` per adapter name, alive only while it is held or awaited.

    A dict of locks that never shrinks grew by one lock per distinct name ever used
    (issue 13 row 8); here the last user out removes the entry.
    """

    def __init__(self) -> None:
        self._entries: Dict[str, List[Any]] = {}  # name -> [lock, users]

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0 and self._entries.get(name) is entry:
                del self._entries[name]

    def __len__(self) -> int:
        return len(self._entries)


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
    # True when ``source`` came from the state file, which keeps no userinfo or query string:
    # such an adapter is reloaded from its local copy only (it cannot be downloaded again).
    source_redacted: bool = False
    origin: str = ORIGIN_API
    load_seconds: Optional[float] = None  # how long the last load took (download included)
    # The engine's API key for this adapter's calls (AIBrix's additional_config["api-key"]), used when
    # Patio has no engine key of its own; a reload after an engine restart needs it.  Kept only in the
    # 0600 state file, never in views, logs or metrics.
    engine_key: Optional[str] = field(default=None, repr=False)
    # AIBrix's credentials_secret: the NAME of a secret mounted under --credentials-dir, never its
    # values.  A reload that must download again (the local copy is gone) reads the secret anew:
    # the kubelet rotates its files, so the keys of the first load may be stale.
    credentials_secret: Optional[str] = None

    def persisted(self) -> Dict[str, Any]:
        """What a reload needs and no more: the source without secrets (issue 13 row 15)."""
        shown = display_uri(self.source)
        saved = {
            "name": self.name,
            "source": shown,
            "source_redacted": self.source_redacted or shown != self.source,
            "path": self.path,
            "remote": self.remote,
            "extra": self.extra,
            "cleanup_local": self.cleanup_local,
            "loaded_at": self.loaded_at,
            "origin": self.origin,
        }
        if self.engine_key:
            saved["engine_key"] = self.engine_key
        if self.credentials_secret:
            saved["credentials_secret"] = self.credentials_secret
        return saved


class AdapterTable(Dict[str, Adapter]):
    """The adapters Patio holds, by name, indexing those that carry an engine key.

    Listing the engine's adapters needs *a* key when Patio has none of its own; finding one
    by scanning every record made each load cost the size of the set (10,000 adapters).
    """

    def __init__(self) -> None:
        super().__init__()
        self._keyed: Dict[str, str] = {}

    def __setitem__(self, name: str, adapter: Adapter) -> None:
        super().__setitem__(name, adapter)
        if adapter.engine_key:
            self._keyed[name] = adapter.engine_key
        else:
            self._keyed.pop(name, None)

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        self._keyed.pop(name, None)

    def pop(self, name: str, *default: Any) -> Any:
        self._keyed.pop(name, None)
        return super().pop(name, *default)

    def any_engine_key(self) -> Optional[str]:
        return next(iter(self._keyed.values()), None)


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
    if kind == BAD_ANSWER:
        return EngineError(
            f"engine's answer to the {op} of {name} is not its LoRA contract: {message}",
            engine_status=outcome.status,
            error_type="engine_bad_answer",
        )
    assert kind == INTERNAL, kind
    return EngineError(f"engine failed to {op} {name} ({outcome.status}): {message}", engine_status=outcome.status)


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
        self._state = StateFile(settings.state_dir)
        self._locks = NamedLocks()
        # name -> (when it failed, the record): the eviction order of failed-load records.
        self._failed: "OrderedDict[str, Tuple[float, Adapter]]" = OrderedDict()
        self._chores: Set["asyncio.Task[None]"] = set()
        self._persist_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: Optional[asyncio.Task[None]] = None
        self._engine_reachable: Optional[bool] = None
        # Set by patio.app when the runtime is on: nothing is reloaded into a sleeping engine.
        self.engine_asleep: Callable[[], bool] = lambda: False
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
        # name -> failed reconcile reloads, exported in patio_lora_reconcile_failures_total{adapter}
        # (patio.lora.residency).  Only adapters Patio holds: bounded by --max-adapters.
        self._reload_failures: Dict[str, float] = {}

    # -- helpers ----------------------------------------------------------------------
    def lock(self, name: str) -> "contextlib.AbstractAsyncContextManager[None]":
        """``async with manager.lock(name):`` serialises every change to one adapter."""
        return self._locks.hold(name)

    def _artifacts(self) -> Optional["AdapterArtifacts"]:
        return self.artifacts

    def is_remote(self, source: str) -> bool:
        service = self._artifacts()
        if service is not None:
            return bool(service.is_remote(source))
        return is_materialized(source)

    async def _persist(self, *names: str, scrub: bool = False) -> None:
        """Save what changed for ``names`` (patio.lora.state: one journal line each, or the whole
        set when it is small, the journal long, or ``scrub``: an engine key must leave the disk)."""
        async with self._persist_lock:
            store = self._state
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

    async def _engine_call(self, op: str, payload: Mapping[str, Any], key: Optional[str] = None) -> Outcome:
        timeout = self.settings.load_timeout if op == "load" else self.settings.unload_timeout
        return await self.context.run_engine(self.client.lora, op, payload, timeout, key)

    async def engine_adapters(self) -> Dict[str, str]:
        # An engine that demands a key Patio was not given answers to an adapter's own key.
        key = self.adapters.any_engine_key()
        return await self.context.run_engine_query(self.client.adapters, self.settings.models_timeout, key)

    async def _confirmed(self, name: str, path: str) -> bool:
        try:
            return (await self.engine_adapters()).get(name) == path
        except PatioError:
            return False

    def _reload_failed(self, adapter: Adapter, message: str) -> None:
        adapter.engine_confirmed, adapter.last_error = False, _short(message)
        for gone in [n for n in self._reload_failures if n not in self.adapters]:
            del self._reload_failures[gone]
        self._reload_failures[adapter.name] = self._reload_failures.get(adapter.name, 0.0) + 1

    def reload_failures(self) -> Dict[str, float]:
        """Failed reconcile reloads by adapter, for the adapters Patio still holds."""
        held = self.adapters
        return {name: count for name, count in list(self._reload_failures.items()) if name in held}

    def _record(self, op: str, result: str, started: float) -> None:
        self._ops.inc(op, result)
        self._durations.observe(time.monotonic() - started, op)

    # -- failed records ---------------------------------------------------------------
    def _failed_record(self, adapter: Adapter, message: str) -> None:
        """Mark ``adapter`` failed and listed, within the bounds on failed records."""
        adapter.state, adapter.last_error = FAILED, _short(message)
        self.adapters[adapter.name] = adapter
        self._failed[adapter.name] = (time.monotonic(), adapter)
        self._failed.move_to_end(adapter.name)
        self._prune_failed()

    def _prune_failed(self, room_for: int = 0) -> None:
        """Evict failed records past the count or time bound; with ``room_for``, also the oldest
        ones until that many more records fit under ``--max-adapters`` (a record of a failed load
        must never stand in the way of a load)."""
        horizon = time.monotonic() - FAILED_RECORD_TTL
        evicted: List[Adapter] = []
        while self._failed:
            name, (when, record) = next(iter(self._failed.items()))
            crowded = len(self.adapters) + room_for > self.settings.max_adapters
            if len(self._failed) <= MAX_FAILED_RECORDS and when >= horizon and not crowded:
                break
            del self._failed[name]
            if self.adapters.get(name) is record and record.state == FAILED:
                del self.adapters[name]
                evicted.append(record)
        self._drop(evicted)

    def _drop(self, evicted: List[Adapter]) -> None:
        """Forget the download status of evicted records; delete what their downloads left."""
        service = self._artifacts()
        if service is None:
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
        service = self._artifacts()
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
        origin: str = ORIGIN_API,
        plan: Any = None,
        engine_key: Optional[str] = None,
        credentials_secret: Optional[str] = None,
    ) -> Tuple[str, Adapter]:
        """Load (or confirm) an adapter; returns a message and the record.  Raises PatioError.

        All or nothing: when an adapter of this name is loaded, it stays loaded, listed and
        persisted, with its files, until the engine has confirmed the new one.
        """
        # Every caller (the API, the adapters file) gets the edge's rules: nothing unchecked
        # reaches a directory name, a log line, the state file or the engine.
        check_name(name, "lora_name")
        check_local_or_uri(check_source(source, "lora_path"), "lora_path")
        started = time.monotonic()
        async with self.lock(name):
            existing = self.adapters.get(name)
            previous = existing if existing is not None and existing.state == LOADED else None
            if previous is not None and not load_inplace:
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
            remote = self.is_remote(source)
            adapter = Adapter(
                name, source, "", remote=remote, extra=dict(extra), cleanup_local=cleanup_local, origin=origin
            )
            adapter.engine_key, adapter.credentials_secret = engine_key, credentials_secret
            if previous is None:
                self.adapters[name] = adapter  # listed as "loading" while it downloads and loads
            try:
                await self._load_into_engine(adapter, previous, load_inplace, credentials, plan)
            except BaseException as exc:  # cancellation included: the old adapter must survive it
                message = exc.message if isinstance(exc, PatioError) else f"interrupted ({type(exc).__name__})"
                if previous is not None:
                    self.adapters[name] = previous
                    previous.last_error = _short(f"in-place reload from {display_uri(source)} failed: {message}")
                    await self._discard(adapter, keep=previous)
                else:
                    self._failed_record(adapter, message)
                self._record("load", "failed", started)
                raise
            adapter.state, adapter.loaded_at, adapter.last_error = LOADED, time.time(), None
            adapter.load_seconds = time.monotonic() - started
            self.adapters[name] = adapter
            self._failed.pop(name, None)
            # The engine's own answer confirms it (or its listing did, after a failed call): asking
            # /v1/models again here cost the size of the set per load.  Reconciliation re-checks.
            adapter.engine_confirmed = True
            scrub = previous is not None and bool(previous.engine_key) and previous.engine_key != adapter.engine_key
            await self._persist(name, scrub=scrub)
            if previous is not None:
                # Only now, with the engine on the new directory and the state file saying so.
                await self._discard(previous, keep=adapter)
            self._record("load", "success", started)
            log.info("loaded LoRA adapter %s from %s", name, display_uri(source))
            return f"LoRA adapter '{name}' loaded", adapter

    async def _load_into_engine(
        self,
        adapter: Adapter,
        previous: Optional[Adapter],
        load_inplace: bool,
        credentials: Optional[Mapping[str, Any]],
        plan: Any = None,
    ) -> str:
        """Download (if remote) and ask the engine to load; sets ``adapter.path``.  Raises PatioError."""
        name, path = adapter.name, adapter.source
        if adapter.remote:
            service = self._artifacts()
            if service is None:
                raise BadRequest("remote adapter sources are not enabled in this Patio", param="lora_path")
            # The directory the engine serves now is never written: a new download goes beside it.
            path = await service.materialize(
                name,
                adapter.source,
                dict(credentials) if credentials is not None else None,
                current=previous.path if previous else None,
                in_use=True,
                plan=plan,
            )
        adapter.path = path
        payload: Dict[str, Any] = {"lora_name": name, "lora_path": path, **adapter.extra}
        if load_inplace:
            payload["load_inplace"] = True
        try:
            outcome = await self._engine_call("load", payload, adapter.engine_key)
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
        return path

    async def _discard(self, old: Adapter, keep: Adapter) -> None:
        """Delete the download directory of ``old`` unless ``keep`` (the adapter that stays) uses it."""
        service = self._artifacts()
        if service is None or not old.remote or not old.path or old.path == keep.path:
            return
        try:
            await service.discard(old.name, old.path)
        except PatioError as exc:
            log.warning("could not delete %s (adapter %s): %s", old.path, old.name, exc.message)

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
                key = existing.engine_key if existing is not None else None
                outcome = await self._engine_call("unload", {"lora_name": name, **(extra or {})}, key)
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
                    self._failed.pop(name, None)
                self._record("unload", "failed", started)
                raise outcome_error(outcome, "unload", name, self.client.spec.lora_hint)
            self.adapters.pop(name, None)
            self._failed.pop(name, None)
            await self._persist(name, scrub=existing is not None and bool(existing.engine_key))
            cleanup = (
                existing is not None
                and existing.remote
                and (cleanup_local if cleanup_local is not None else existing.cleanup_local)
            )
            if cleanup:
                service = self._artifacts()
                if service is not None:
                    assert existing is not None
                    await service.cleanup(name, existing.path)
            self._record("unload", "success", started)
            log.info("unloaded LoRA adapter %s", name)
            return f"LoRA adapter '{name}' unloaded" + (
                " (the engine no longer had it)" if outcome.message.startswith("the engine no") else ""
            )

    # -- healing ------------------------------------------------------------------------
    async def restore(self) -> None:
        """Take over the desired set persisted by an earlier Patio (confirmed by the next reconcile)."""
        try:
            saved = await self.context.run_blocking(self._state.read)
        except (OSError, ValueError) as exc:
            log.error("cannot read the LoRA state in %s: %s", self.settings.state_dir, exc)
            return
        restored = 0
        for item in saved:
            adapter = _restored(item)
            if adapter is None:
                # A hand-edited or foreign file must not poison every later listing (issue 13 row 13).
                log.error("ignoring an unusable adapter entry in the LoRA state in %s", self.settings.state_dir)
                continue
            if adapter.name not in self.adapters:
                self.adapters[adapter.name] = adapter
                restored += 1
        if restored:
            log.info("restored %d LoRA adapter(s) from %s", restored, self.settings.state_dir)

    async def reconcile(self, reason: str) -> int:
        """Load again what the engine lost; returns how many were reloaded."""
        if self.engine_asleep():
            log.debug("LoRA reconcile (%s) skipped: the engine is asleep (it runs after the wake)", reason)
            return 0
        # What the engine's listing can speak for: records loaded (at their path) before it was asked.
        asked = {n: (a, a.path) for n, a in self.adapters.items() if a.state == LOADED}
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
                # The listing above may predate a load that finished meanwhile: then look again (once
                # per changed adapter; after an engine restart with 10,000 adapters, not 10,000 times).
                seen = asked.get(name)
                if seen is not None and seen[0] is locked and seen[1] == locked.path:
                    root = engine.get(name)
                else:
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
        path = adapter.path
        try:
            service = self._artifacts()
            if adapter.remote and service is not None:
                # The engine lost the adapter, so its directory is free to reuse or complete;
                # a source read back from the state file has no secrets left: local copy only.
                # A mounted secret is read again now (plan() raises a clear error if it is gone).
                plan = None
                if adapter.credentials_secret is not None:
                    plan = await service.plan(name, credentials_secret=adapter.credentials_secret)
                path = await service.materialize(
                    name, adapter.source, None, current=adapter.path, reuse_only=adapter.source_redacted, plan=plan
                )
            payload = {"lora_name": name, "lora_path": path, **adapter.extra}
            outcome = await self._engine_call("load", payload, adapter.engine_key)
        except PatioError as exc:
            self._reload_failed(adapter, exc.message)
            log.warning("LoRA reconcile: reloading %s failed: %s", name, exc.message)
            return False
        if outcome.kind not in (OK, DUPLICATE):
            self._reload_failed(adapter, outcome.message)
            log.warning("LoRA reconcile: engine refused to reload %s: %s", name, outcome.message)
            return False
        adapter.engine_confirmed, adapter.last_error = True, None
        if path != adapter.path:
            adapter.path = path
            try:
                await self._persist(name)
            except PatioError as exc:
                adapter.last_error = _short(exc.message)
                log.error("LoRA reconcile: %s", exc.message)
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
        for chore in list(self._chores):
            chore.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

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
                await self._persist(name)

    def views(self) -> List[Dict[str, Any]]:
        self._prune_failed()
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
                "origin": adapter.origin,
            }
            if adapter.extra:
                view["options"] = dict(adapter.extra)
            if service is not None and adapter.remote:
                view["download"] = service.status(adapter.name)
            out.append(view)
        return out


def _restored(item: Mapping[str, Any]) -> Optional[Adapter]:
    """An adapter from the state file, or None when the entry is not one Patio could have written."""
    name, path = item.get("name"), item.get("path")
    source = item.get("source") or path
    extra = item.get("extra") or {}
    loaded_at = item.get("loaded_at")
    key = item.get("engine_key")
    secret = item.get("credentials_secret")
    if not (isinstance(name, str) and ADAPTER_NAME.fullmatch(name)):
        return None
    if not (isinstance(path, str) and isinstance(source, str) and path and is_clean(path) and is_clean(source)):
        return None
    if not isinstance(extra, dict) or not all(isinstance(k, str) and is_clean(k) for k in extra):
        return None
    if not all(isinstance(v, (bool, int, float)) or (isinstance(v, str) and is_clean(v)) for v in extra.values()):
        return None
    return Adapter(
        name=name,
        source=source,
        path=path,
        remote=bool(item.get("remote")),
        extra=dict(extra),
        cleanup_local=bool(item.get("cleanup_local", True)),
        state=LOADED,
        loaded_at=float(loaded_at) if isinstance(loaded_at, (int, float)) else None,
        engine_confirmed=False,
        source_redacted=bool(item.get("source_redacted")),
        origin=str(item.get("origin")) if item.get("origin") in (ORIGIN_API, ORIGIN_FILE) else ORIGIN_API,
        engine_key=key if isinstance(key, str) and key and is_clean(key) else None,
        credentials_secret=secret if _secret_name(secret) else None,
    )


def _secret_name(value: Any) -> bool:
    """A name read_secret() would accept (it checks again, and confines the path, at reload)."""
    return isinstance(value, str) and is_clean(value) and bool(SECRET_NAME.match(value)) and ".." not in value
