"""The adapters file, kept true: watch it, validate it whole, converge each adapter on its own.

Every ``--adapters-file-interval`` seconds the file is stat'ed (following
symlinks, so a ConfigMap update -- kubelet swapping the ``..data`` symlink to a
new timestamped directory -- shows as a new inode) and re-read when it
changed.  A file that does not validate changes nothing: the last good state
stays applied and the error is reported.  A file that disappears changes
nothing either (a remount must not unload every adapter).

Each adapter named by the file gets its own worker: apply, and on a failure
that could pass (engine down, 5xx, store trouble) retry with doubling backoff
up to ``--adapter-apply-attempts``, then ``failed`` with the reason.  At most
``MAX_PARALLEL_APPLIES`` applies run at once; a worker sleeping between
retries holds no slot, so one bad adapter never holds up the others (the
syncer's open issue).  Failed adapters are tried again when the file changes,
when the engine comes back, when Patio restarts, and ``--adapter-failed-retry-interval``
seconds after they failed (default 300; an object uploaded after the ConfigMap was
applied, or a store that was down, heals without anyone touching the file).

With ``--resolver-dir`` (vLLM's ``VLLM_LORA_RESOLVER_CACHE_DIR``), remote
adapters are downloaded into that directory (``patio.lora.resolver_dir``) and
vLLM's ``lora_filesystem_resolver`` loads them on the first request naming
them; no load call.  Removal deletes the directory and unloads from the engine
(deleting alone does not free the engine's memory).  Local sources are loaded
through the engine as usual.

Adapters loaded by API calls are left alone unless the file names them.
"""

import asyncio
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from patio.artifacts.uri import display_uri
from patio.engines.base import NOT_FOUND, OK
from patio.errors import NotFound, PatioError
from patio.lora import resolver_dir
from patio.lora.adapter_config import resolver_config
from patio.lora.desired import (
    MAX_FILE_BYTES,
    AdaptersFileError,
    DesiredAdapter,
    DesiredState,
    load_desired,
    refused_message,
)
from patio.lora.engine_errors import outcome_error
from patio.lora.manager import LoraManager
from patio.lora.records import AVAILABLE, LOADED, ORIGIN_FILE, ORIGIN_RESOLVER, Adapter
from patio.lora.request import LoadRequest
from patio.lora.residency import Resident
from patio.lora.settings import LoraSettings
from patio.tasks import cancel_all_and_wait

if TYPE_CHECKING:  # pragma: no cover
    from patio.component import AppContext

log = logging.getLogger("patio.lora.desired")

# Applies (downloads, engine loads) running at once; the rest wait their turn.
MAX_PARALLEL_APPLIES = 4
# Longest wait between two attempts of one adapter.
MAX_BACKOFF = 60.0
# Seconds between looks at a name's fill lock held by another Patio sharing the resolver dir.
RESOLVER_LOCK_POLL = 0.2
# The manager's answer when --max-adapters is reached (patio.lora.manager.LoraManager.load).
NO_ROOM = "too_many_adapters"

Signature = Tuple[str, int, int, int, int]


def read_if_changed(path: str, previous: Optional[Signature]) -> Tuple[Optional[Signature], Optional[bytes]]:
    """(signature, bytes) when the file changed since ``previous``; (signature, None) when not.

    Blocking.  ``os.stat`` follows symlinks, so a swapped ConfigMap ``..data`` link is a change.
    Raises OSError (FileNotFoundError when absent).
    """
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise IsADirectoryError(f"{path} is not a regular file")
    signature = (os.path.realpath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    if signature == previous:
        return signature, None
    with open(path, "rb") as handle:
        return signature, handle.read(MAX_FILE_BYTES + 1)


def _same(recorded: str, wanted: str) -> bool:
    """The manager saves sources without secrets (userinfo, signed queries): compare what is shown."""
    return display_uri(recorded) == display_uri(wanted)


def retryable(exc: PatioError) -> bool:
    """Worth another attempt: the engine or a store may answer better later, or --max-adapters
    has room again once the file's own removals are done (a swap of one set for another)."""
    return exc.status >= 500 or exc.status in (408, 429) or exc.error_type == NO_ROOM


@dataclass
class Status:
    """Where one adapter named by the file stands."""

    name: str
    action: str  # "present" or "absent"
    source: str = ""  # display form (no credentials)
    state: str = "pending"  # pending, applying, retrying, ok, failed
    attempts: int = 0
    last_error: Optional[str] = None
    next_attempt_at: Optional[float] = None  # retrying: the next attempt; failed: the next fresh set
    no_room: bool = False  # the last attempt found --max-adapters reached: a removal wakes it

    def view(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "action": self.action, "state": self.state}
        if self.source:
            out["source"] = self.source
        out["attempts"] = self.attempts
        out["last_error"] = self.last_error
        if self.next_attempt_at is not None and self.state in ("retrying", "failed"):
            out["next_attempt_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.next_attempt_at))
        return out


class DesiredSync:
    def __init__(
        self,
        context: "AppContext",
        manager: LoraManager,
        settings: LoraSettings,
        staging: Optional[Any] = None,
    ) -> None:
        """``staging``: an ``AdapterArtifacts`` whose adapter dir is the resolver dir's staging area."""
        assert settings.adapters_file is not None
        self.context = context
        self.manager = manager
        self.settings = settings
        self.path: str = settings.adapters_file
        self._engine_up: Optional[bool] = None  # the health watch's last word (flips retry failures)
        self.staging = staging if settings.resolver_dir else None
        self.desired: Optional[DesiredState] = None
        self.file_state = "not read yet"
        self.file_error: Optional[str] = None
        self.read_at: Optional[float] = None
        self._signature: Optional[Signature] = None
        self._raw: Optional[bytes] = None
        self._statuses: Dict[str, Status] = {}
        self._targets: Dict[str, Optional[DesiredAdapter]] = {}
        self._versions: Dict[str, int] = {}
        self._workers: Dict[str, "asyncio.Task[None]"] = {}
        self._kicks: Dict[str, asyncio.Event] = {}
        self._failures: Dict[str, float] = {}
        self._slots: Optional[asyncio.Semaphore] = None
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional["asyncio.Task[None]"] = None
        self._swept = False

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        self._slots = asyncio.Semaphore(MAX_PARALLEL_APPLIES)
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        await cancel_all_and_wait([self._task, *self._workers.values()])

    async def run(self) -> None:
        # The manager's own loop restores the saved set too; restore() skips names already
        # known, and this file's first reconcile must see what an earlier Patio loaded.
        await self.manager.restore()
        assert self._wake is not None
        while True:
            try:
                await self.poll()
                self._retry_failed()
            except Exception:  # the loop must outlive any one round
                log.exception("adapters file round failed")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.adapters_file_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    def on_engine_health(self, up: bool) -> None:
        """The engine came back: adapters that failed get a fresh set of attempts.

        Only a flip from down to up counts: the watch also announces its first known state,
        and an engine that was up all along has nothing new to offer a failed adapter.
        """
        previous, self._engine_up = self._engine_up, up
        if not up or previous is not False:
            return
        for name, status in list(self._statuses.items()):
            if status.state == "failed":
                self._spawn(name, reset=True)

    def _retry_failed(self) -> None:
        """Failed adapters whose --adapter-failed-retry-interval has passed get a fresh set of attempts."""
        now = time.time()
        for name, status in list(self._statuses.items()):
            due = status.next_attempt_at
            if status.state == "failed" and due is not None and now >= due:
                log.info("adapter %s: trying again %.0fs after it failed", name, self.settings.failed_retry_interval)
                self._spawn(name, reset=True)

    # -- the file -----------------------------------------------------------------------
    async def poll(self) -> None:
        try:
            signature, raw = await self.context.run_blocking(read_if_changed, self.path, self._signature)
        except OSError as exc:
            state = "missing" if isinstance(exc, FileNotFoundError) else "unreadable"
            error = f"{self.path}: {exc.strerror or exc}; the last applied adapters stay as they are"
            if (state, error) != (self.file_state, self.file_error):
                log.error("adapters file %s", error)
            self.file_state, self.file_error, self._signature = state, error, None
            return
        self._signature = signature
        if raw is None or raw == self._raw:
            if self.file_state in ("missing", "unreadable"):  # back, unchanged
                self.file_state, self.file_error = ("applied" if self.desired else "invalid"), None
            self._drift()
            return
        self._raw = raw
        self.read_at = time.time()
        try:
            # In a worker thread: validating a 1 MiB file of 20,000 entries takes a third of a
            # second, which the event loop (and every probe on it) must not wait for.
            desired = await self.context.run_blocking(load_desired, raw, self.path, self.settings.max_adapters)
        except AdaptersFileError as exc:
            self.file_state, self.file_error = "invalid", exc.message + "; nothing of it was applied"
            log.error("%s", self.file_error)
            return
        except Exception as exc:  # a bug in the parser: the status must say so, not "applied"
            log.exception("adapters file %s could not be read", self.path)
            self.file_state = "invalid"
            self.file_error = f"{self.path} could not be read ({type(exc).__name__}); nothing of it was applied"
            return
        self.file_state, self.file_error = "applied", refused_message(desired, self.settings.max_adapters)
        if self.file_error:
            log.error("adapters file %s: %s", self.path, self.file_error)
        await self.apply(desired)

    async def apply(self, desired: DesiredState) -> None:
        """Point every affected adapter's worker at its new target."""
        self.desired = desired
        wanted: Dict[str, Optional[DesiredAdapter]] = {a.name: a for a in desired.adapters}
        for name in desired.absent:
            wanted[name] = None
        keep = set(wanted) | set(desired.conflicts)
        for name, adapter in list(self.manager.adapters.items()):
            if adapter.origin in (ORIGIN_FILE, ORIGIN_RESOLVER) and name not in keep:
                wanted[name] = None  # the file loaded it and no longer names it
        if self.settings.resolver_dir and not self._swept:
            # Directories an earlier Patio installed for adapters the file no longer names.
            self._swept = True
            await self.context.run_download(resolver_dir.tidy, self.settings.resolver_dir, sorted(keep))
            for name in await self.context.run_blocking(resolver_dir.ours, self.settings.resolver_dir):
                if name not in keep:
                    wanted[name] = None
        for name in list(self._statuses):
            if name not in wanted:
                worker = self._workers.get(name)
                if worker is not None and not worker.done():
                    wanted[name] = None  # mid-apply: let it converge to "gone", then it drops itself
                else:
                    self._drop(name)
        for name, target in wanted.items():
            self._set_target(name, target)
        log.info(
            "adapters file %s: %d wanted, %d to remove, %d left alone (in both lists), %d refused",
            self.path,
            len(desired.adapters),
            sum(1 for t in wanted.values() if t is None),
            len(desired.conflicts),
            len(desired.refused),
        )

    def _drift(self) -> None:
        """The file did not change, but an adapter it wants went away (an API unload): apply again."""
        if self.desired is None:
            return
        for adapter in self.desired.adapters:
            status = self._statuses.get(adapter.name)
            record = self.manager.adapters.get(adapter.name)
            gone = record is None or not _same(record.source, adapter.source)
            if status is not None and status.state == "ok" and gone:
                self._spawn(adapter.name, reset=True)

    # -- per-adapter workers --------------------------------------------------------------
    def _set_target(self, name: str, target: Optional[DesiredAdapter]) -> None:
        status = self._statuses.get(name)
        if name in self._targets and self._targets[name] == target and status is not None:
            if status.state != "failed":
                return  # same target, converged or on its way
        self._targets[name] = target
        self._statuses[name] = Status(
            name, "absent" if target is None else "present", display_uri(target.source) if target else ""
        )
        self._spawn(name, reset=True)

    def _spawn(self, name: str, reset: bool) -> None:
        self._versions[name] = self._versions.get(name, 0) + 1
        if reset and name in self._statuses:
            status = self._statuses[name]
            status.state, status.attempts, status.next_attempt_at = "pending", 0, None
        worker = self._workers.get(name)
        if worker is not None and not worker.done():
            self._kicks[name].set()
            return
        self._kicks[name] = asyncio.Event()
        self._workers[name] = asyncio.ensure_future(self._worker(name))

    def _room_freed(self) -> None:
        """A removal finished: adapters that found --max-adapters reached try again now, with
        fresh attempts (during a swap of sets their backoff would otherwise outlast it)."""
        for name, status in list(self._statuses.items()):
            if status.no_room and status.state in ("retrying", "failed"):
                self._spawn(name, reset=True)

    def _drop(self, name: str) -> None:
        """Forget a name entirely (no worker runs for it): memory and metric series stay bounded."""
        for table in (self._statuses, self._targets, self._failures, self._versions, self._kicks):
            table.pop(name, None)

    async def _worker(self, name: str) -> None:
        attempt = 0
        try:
            while name in self._targets:
                version, target = self._versions[name], self._targets[name]
                status = self._statuses[name]
                attempt += 1
                status.state, status.attempts, status.next_attempt_at = "applying", attempt, None
                error: Optional[str] = None
                again = True
                status.no_room = False
                try:
                    assert self._slots is not None
                    async with self._slots:
                        if self._versions.get(name) == version:  # not superseded while waiting for a slot
                            await self._apply_one(name, target)
                except PatioError as exc:
                    error, again = exc.message, retryable(exc)
                    status.no_room = exc.error_type == NO_ROOM
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug must fail this adapter, not the others
                    log.exception("applying adapter %s failed", name)
                    error = f"internal error: {exc!r}"
                if self._versions.get(name) != version:
                    attempt = 0  # the file changed meanwhile: start over towards the new target
                    continue
                if error is None:
                    status.state, status.last_error = "ok", None
                    if target is None:
                        self._room_freed()
                    if target is None and self.desired is not None and name not in self.desired.absent:
                        self._workers.pop(name, None)
                        self._drop(name)  # removed because the file dropped it: nothing left to report
                    return
                self._failures[name] = self._failures.get(name, 0.0) + 1
                status.last_error = error
                if not again or attempt >= self.settings.apply_attempts:
                    retry_in = self.settings.failed_retry_interval
                    status.state, status.next_attempt_at = "failed", (time.time() + retry_in if retry_in else None)
                    later = f"; trying again in {retry_in:g}s" if retry_in else ""
                    log.error("adapter %s: giving up after %d attempt(s): %s%s", name, attempt, error, later)
                    return
                delay = min(MAX_BACKOFF, self.settings.apply_backoff * (2 ** (attempt - 1)))
                status.state, status.next_attempt_at = "retrying", time.time() + delay
                log.warning("adapter %s: attempt %d failed (%s); retrying in %.1fs", name, attempt, error, delay)
                kick = self._kicks.setdefault(name, asyncio.Event())
                try:
                    await asyncio.wait_for(kick.wait(), timeout=delay)
                    attempt = 0  # a new target (or the engine came back): a fresh set of attempts
                except asyncio.TimeoutError:
                    pass
                kick.clear()
        finally:
            if self._workers.get(name) is asyncio.current_task():
                self._workers.pop(name, None)

    async def _apply_one(self, name: str, target: Optional[DesiredAdapter]) -> None:
        if target is None:
            await self._remove(name)
        elif self.staging is not None and self.staging.is_remote(target.source):
            await self._present_resolver(name, target)
        else:
            await self._present_loaded(name, target)

    async def _present_loaded(self, name: str, target: DesiredAdapter) -> None:
        manager = self.manager
        record = manager.adapters.get(name)
        extra: Dict[str, Any] = {}
        if target.pinned is not None and "pinned" in manager.client.spec.load_fields:
            extra["pinned"] = target.pinned
        options = tuple(extra.items())
        if record is not None and record.origin == ORIGIN_RESOLVER:
            await self._remove(name)  # the source is now local (or resolver mode is off): load it instead
            record = None
        if record is not None and record.state == LOADED:
            # Pinning is compared only when the file says it (and the engine has it).
            same_pin = "pinned" not in extra or bool(record.extra.get("pinned")) == extra["pinned"]
            if _same(record.source, target.source) and same_pin:
                await manager.set_origin(name, ORIGIN_FILE)
                return
            if "load_inplace" in manager.client.spec.load_fields:
                await manager.load(
                    LoadRequest(name, target.source, options=options, load_inplace=True, origin=ORIGIN_FILE)
                )
                return
            await self._unload(name)
        await manager.load(LoadRequest(name, target.source, options=options, origin=ORIGIN_FILE))

    async def _present_resolver(self, name: str, target: DesiredAdapter) -> None:
        manager, directory = self.manager, self.settings.resolver_dir
        assert directory is not None and self.staging is not None
        record = manager.adapters.get(name)
        if record is not None and record.origin != ORIGIN_RESOLVER and record.state == LOADED:
            await self._unload(name)  # loaded through the API before: vLLM must resolve it from the directory
            record = None
        shown = display_uri(target.source)
        if await self.context.run_blocking(resolver_dir.holds, directory, name, shown):
            if record is None or not _same(record.source, target.source):
                self._track(name, target, os.path.join(directory, name), None)
            return
        started = time.monotonic()
        # A planted DIR/.patio-staging symlink must not receive the download (nor trash a delete).
        await self.context.run_blocking(resolver_dir.ready_for_downloads, directory)
        fd = await self._resolver_lock(directory, name)
        try:
            if await self.context.run_blocking(resolver_dir.holds, directory, name, shown):
                # Another Patio sharing the directory installed this very copy while we waited.
                self._track(name, target, os.path.join(directory, name), time.monotonic() - started)
                if record is not None:
                    await self._engine_unload(name)
                return
            staged = await self.staging.materialize(name, target.source, None)
            await self._resolvable(staged, target)
            replaced = record is not None or await self.context.run_blocking(
                lambda: os.path.lexists(os.path.join(directory, name))
            )
            async with manager.lock(name):
                path = await self.context.run_download(resolver_dir.install, directory, name, staged)
                self._track(name, target, path, time.monotonic() - started)
        finally:
            resolver_dir.unlock(fd)
        if replaced:
            # vLLM keeps a resolved adapter by name: unload so the next request reads the new copy.
            await self._engine_unload(name)
        log.info("adapter %s from %s is in %s for vLLM's resolver", name, shown, path)

    async def _resolvable(self, staged: str, target: DesiredAdapter) -> None:
        """The staged copy is one vLLM's resolver takes (``patio.lora.adapter_config``), its config
        rewritten where the file named the served base model; ``NotResolvable`` otherwise."""
        served = await self.manager.engine_models()
        raw = await self.context.run_blocking(resolver_dir.read_adapter_config, staged)
        fixed = resolver_config(raw, served.base, target.base_model)
        if fixed is not None and raw is not None:
            await self.context.run_download(resolver_dir.rewrite_adapter_config, staged, raw, fixed)
            log.info("adapter %s: its copy names the served base model, as the adapters file says", target.name)

    async def _resolver_lock(self, directory: str, name: str) -> int:
        """The name's fill lock (``resolver_dir.try_lock``), waiting while another process holds it."""
        waited = False
        while True:
            fd = await self.context.run_blocking(resolver_dir.try_lock, directory, name)
            if fd is not None:
                return fd
            if not waited:
                log.info("adapter %s: another Patio is filling %s; waiting for it", name, directory)
                waited = True
            await asyncio.sleep(RESOLVER_LOCK_POLL)

    def _track(self, name: str, target: DesiredAdapter, path: str, seconds: Optional[float]) -> None:
        adapter = Adapter(name, target.source, path, remote=True, state=AVAILABLE, origin=ORIGIN_RESOLVER)
        adapter.loaded_at, adapter.load_seconds = time.time(), seconds
        self.manager.track(adapter)

    async def _remove(self, name: str) -> None:
        record = self.manager.adapters.get(name)
        directory = self.settings.resolver_dir
        if directory:
            if self.staging is not None:
                await self.staging.cleanup(name)  # a download still under way, or its leftovers
            fd = await self._resolver_lock(directory, name)
            try:
                removed = await self.context.run_download(resolver_dir.remove, directory, name)
            finally:
                resolver_dir.unlock(fd)
            if removed or (record is not None and record.origin == ORIGIN_RESOLVER):
                # Deleting the directory does not free the engine's memory: unload too.
                await self._engine_unload(name)
                async with self.manager.lock(name):
                    current = self.manager.adapters.get(name)
                    if current is not None and current.origin == ORIGIN_RESOLVER:
                        self.manager.forget(name)
                if record is None or record.origin == ORIGIN_RESOLVER:
                    return
        if record is not None and record.origin == ORIGIN_RESOLVER:
            self.manager.forget(name)
            return
        await self._unload(name)

    async def _unload(self, name: str) -> None:
        try:
            await self.manager.unload(name)
        except NotFound:
            pass  # not in the engine: what the file wants

    async def _engine_unload(self, name: str) -> None:
        manager = self.manager
        outcome = await self.context.run_engine(
            manager.client.lora, "unload", {"lora_name": name}, manager.settings.unload_timeout
        )
        if outcome.kind not in (OK, NOT_FOUND):
            raise outcome_error(outcome, "unload", name, manager.client.spec.lora_hint)

    # -- what GET /v1/lora_adapters and /metrics show -------------------------------------
    def status(self) -> Dict[str, Any]:
        desired = self.desired
        out: Dict[str, Any] = {
            "file": self.path,
            "state": self.file_state,
            "error": self.file_error,
            "read_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.read_at)) if self.read_at else None,
            "resolver_dir": self.settings.resolver_dir,
            "adapters": [self._statuses[n].view() for n in sorted(self._statuses)],
        }
        if desired is not None:
            out["shape"] = desired.shape
            if desired.config_name:
                out["name"] = desired.config_name
            out["conflicts"] = list(desired.conflicts)
            out["refused"] = {"count": len(desired.refused), "names": list(desired.refused[:10])}
        return out

    def required(self) -> List[str]:
        """The adapters the file marks required (readiness waits for them)."""
        desired = self.desired
        return [a.name for a in desired.adapters if a.required] if desired is not None else []

    def unrecorded(self) -> List[Resident]:
        """Adapters the file wants that the manager has no record of (waiting, or failed early)."""
        rows: List[Resident] = []
        for name, status in list(self._statuses.items()):
            target = self._targets.get(name)
            if target is None or name in self.manager.adapters:
                continue
            state = "failed" if status.state == "failed" else "pending"
            rows.append(Resident(name, state, target.source, bool(target.pinned), ORIGIN_FILE, None))
        return rows

    def failures(self) -> Dict[str, float]:
        return dict(self._failures)
