"""The supervisor: keeps each launched engine running, and finds the engines again after Patio's restart.

Every ``supervise_interval`` seconds, for each model no operation holds:

- a dead engine (its leader gone, or no longer the process that started: PID reuse) has
  whatever its leader left behind killed, then is relaunched on the same port after a
  backoff that doubles per consecutive failure (``restart_base_delay`` ... ``restart_max_delay``);
  past ``max_restarts`` consecutive failures the model is ``failed`` with ``last_error``;
- a booting engine whose ``/health`` has not answered 200 ``ready_timeout`` seconds after
  its launch is stopped and counted as a failed start;
- an engine ready for ``stable_after`` seconds has its consecutive-failure count reset;
- the engine log is trimmed to its bound.

Adoption, at start: each registry record is matched with the live processes that carry
this Patio's markers (``patio.runtime.launcher``).  The leader it names (PID and start
time), or failing that a marked group leader of that launch, is adopted as it runs;
any other marked process of the model is a remain and is killed; a record with no engine
left is scheduled for a restart (AIBrix ``re_adopt``); a ``stopping`` record has its
stop finished.  Marked processes no record explains are orphans and are stopped.  So a
port never has two engines of this Patio.

Shutdown: the loop stops first (nothing is relaunched), every engine gets SIGTERM in
phase 1 while Patio drains, SIGKILL what is left before the budget ends.
"""

import asyncio
import logging
import signal
import time
from typing import List, Optional

from patio.component import AppContext
from patio.errors import PatioError
from patio.runtime import registry
from patio.runtime.processes import EngineProcess, Marked
from patio.runtime.records import ModelRecord
from patio.runtime.service import Runtime
from patio.tasks import cancel_and_wait

log = logging.getLogger("patio.runtime")

# Engine logs are trimmed every this many ticks (a size check each time is cheap, but need not be often).
TRIM_EVERY = 10
# How often the engine beside Patio is asked whether it still sleeps (it may have restarted awake).
BESIDE_CHECK_EVERY = 5.0
# Of the shutdown budget, what is kept for the last SIGKILL and the registry's save.
SHUTDOWN_RESERVE = 1.5


class Supervisor:
    def __init__(self, context: AppContext, runtime: Runtime) -> None:
        self.context = context
        self.runtime = runtime
        self.settings = runtime.settings
        self.store = runtime.store
        self.launcher = runtime.launcher
        self.metrics = runtime.metrics
        self._task: Optional["asyncio.Task[None]"] = None
        self._ticks = 0
        self._beside_checked = 0.0
        self._shutdown_deadline = 0.0
        self._kill_at = 0.0

    # -- adoption -------------------------------------------------------------------------------
    async def adopt(self) -> None:
        try:
            await self._adopt()
        finally:
            self.runtime.adopted.set()

    async def _adopt(self) -> None:
        records, invalid = await self.context.run_blocking(registry.load, self.store.registry_path)
        if invalid:
            self.metrics.adoptions.inc("invalid", amount=float(invalid))
        marked: List[Marked] = await self.context.run_blocking(self.launcher.marked)
        for record in records:
            await self._adopt_one(record, [m for m in marked if m.model == record.model_name])
        known = {r.model_name for r in records}
        orphans = sorted({m.model for m in marked if m.model not in known})
        for model in orphans:
            log.warning("an engine of %r runs without a registry record (an orphan): stopping it", model)
            await self.context.run_engine(self.launcher.stop_model, model, self.settings.stop_grace)
            self.metrics.adoptions.inc("orphan_stopped")
        if records or orphans:
            await self._save()
        await self._adopt_beside()

    async def _adopt_one(self, record: ModelRecord, mine: List[Marked]) -> None:
        name = record.model_name
        leader = next((m for m in mine if m.pid == record.pid and m.start_time == record.start_time), None)
        if leader is None and record.launch_id:
            leader = next((m for m in mine if m.launch == record.launch_id and m.pid == m.pgid), None)
        if record.phase == "stopping":
            await self.context.run_engine(self.launcher.stop_model, name, self.settings.stop_grace)
            log.info("finished stopping %s (Patio restarted while it was being deactivated)", name)
            self.metrics.adoptions.inc("stopped")
            return
        remains = [m for m in mine if leader is None or m.pgid != leader.pgid]
        if remains:
            log.warning("%s: %d process(es) of an earlier launch found; stopping them", name, len(remains))
            await self.context.run_engine(self._kill_remains, name, remains)
        self.store.models[name] = record
        if record.phase == "failed":
            record.process = None
            return
        if leader is None:
            self._schedule_restart(record, "the engine was not running when Patio restarted")
            self.metrics.adoptions.inc("restart_scheduled")
            return
        record.process = EngineProcess(leader.pid, leader.start_time)
        record.pid, record.start_time, record.launch_id = leader.pid, leader.start_time, leader.launch
        record.launched_at = time.monotonic()  # an adopted booting engine gets its ready timeout anew
        if record.phase == "restarting":
            record.transition("booting")
        self.metrics.adoptions.inc("adopted")
        log.info("adopted the engine of %s on port %d (pid %d, phase %s)", name, record.port, leader.pid, record.phase)

    def _kill_remains(self, name: str, remains: List[Marked]) -> None:
        for pgid in sorted({m.pgid for m in remains}):
            self.launcher.signal_marked([m for m in remains if m.pgid == pgid], signal.SIGKILL)

    async def _adopt_beside(self) -> None:
        beside = self.runtime.beside
        if beside is None or beside.record.engine != "vllm":
            return
        asleep = await self.context.run_engine_query(beside.control.is_sleeping, 2.0)
        if asleep:
            beside.record.transition("sleeping")
            log.info("the engine beside Patio is asleep; this pod stays out of the router until it wakes")
            await beside.seams.leave_router()

    # -- the loop ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self.run())

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # the loop must outlive any one round's bug
                log.exception("engine supervisor round failed")
            await asyncio.sleep(self.settings.supervise_interval)

    async def tick(self) -> None:
        self._ticks += 1
        # Every engine at once: one that does not answer its probe holds up no other.
        checks = [self._check(r) for r in self.store.sorted() if self._free(r)]
        for failure in await asyncio.gather(*checks, return_exceptions=True):
            if isinstance(failure, Exception):
                log.error("engine supervisor check failed: %r", failure)
        if self._ticks % TRIM_EVERY == 0:
            await self.context.run_blocking(self._trim_logs, self.store.sorted())
        await self._check_beside()

    def _trim_logs(self, records: List[ModelRecord]) -> None:
        for record in records:
            self.launcher.trim_log(record)

    def _free(self, record: ModelRecord) -> bool:
        """No operation runs on ``record`` and it is still the store's (checked after every await)."""
        name = record.model_name
        return record.busy is None and not self.store.locked(name) and self.store.get(name) is record

    async def _act(self, record: ModelRecord, what: str) -> bool:
        """Take the model's lock for a change; False when an operation got there first."""
        if not self._free(record):
            return False
        await self.store.lock(record.model_name).acquire()  # free: taken without waiting
        record.busy = what
        return True

    def _done(self, record: ModelRecord) -> None:
        record.busy = None
        self.store.lock(record.model_name).release()

    async def _check(self, record: ModelRecord) -> None:
        phase = record.phase
        if phase in ("failed", "stopping"):
            return
        if phase == "restarting":
            if record.next_restart_at is not None and time.time() >= record.next_restart_at:
                if await self._act(record, "restart"):
                    try:
                        await self._relaunch(record)
                    finally:
                        self._done(record)
            return
        process = record.process
        alive = process is not None and await self.context.run_blocking(process.alive)
        if not alive:
            if not await self._act(record, "restart"):
                return
            try:
                code = process.returncode() if process is not None else None
                reason = self.launcher.exit_reason(record, code)
                log.warning("the engine of %s died: %s", record.model_name, reason)
                await self.context.run_engine(self.launcher.stop_model, record.model_name, 0.0, process)
                self._schedule_restart(record, reason)
                await self._save()
            finally:
                self._done(record)
            return
        if phase == "sleeping":
            return  # an engine asleep is not probed for readiness
        ready = await self.context.run_engine_query(self.runtime.control(record).healthy, self.settings.probe_timeout)
        if not self._free(record) or record.phase != phase:
            return  # a sleep, wake or deactivation began while the probe ran
        now = time.monotonic()
        if ready:
            changed = False
            if not record.ready:
                record.ready_since = now
            record.ready = record.ever_ready = True
            if phase != "active" or record.last_error is not None:
                record.transition("active")
                record.last_error = None  # AIBrix clears it once the engine serves again
                changed = True
                log.info("%s is ready on port %d", record.model_name, record.port)
            stable = record.ready_since is not None and now - record.ready_since >= self.settings.stable_after
            if record.failures and stable:
                record.failures = 0
                changed = True
            if changed:
                await self._save()
            return
        record.ready = False
        if record.ever_ready or now - record.launched_at <= self.settings.ready_timeout:
            if phase == "active" and record.transition("booting"):  # AIBrix: not ready is booting again
                await self._save()
            return
        if not await self._act(record, "restart"):
            return
        try:
            reason = f"the engine was not ready within {self.settings.ready_timeout:g}s of its start"
            log.warning("%s: %s; stopping it", record.model_name, reason)
            await self.context.run_engine(
                self.launcher.stop_model, record.model_name, self.settings.stop_grace, process
            )
            self._schedule_restart(record, reason)
            await self._save()
        finally:
            self._done(record)

    def _schedule_restart(self, record: ModelRecord, error: str) -> None:
        record.process, record.pid, record.start_time = None, None, None
        record.ready = False
        record.failures += 1
        record.last_error = error
        if record.failures > self.settings.max_restarts:
            if record.transition("failed"):
                self.metrics.budget_exhausted(record.model_name)
            record.last_error = f"{error}; restart budget exhausted ({self.settings.max_restarts} restarts in a row)"
            record.next_restart_at = None
            log.error("%s failed: %s", record.model_name, record.last_error)
            return
        delay = min(self.settings.restart_base_delay * 2 ** (record.failures - 1), self.settings.restart_max_delay)
        record.transition("restarting")
        record.next_restart_at = time.time() + delay
        log.info(
            "%s restarts in %.1fs (failure %d of at most %d)",
            record.model_name,
            delay,
            record.failures,
            self.settings.max_restarts,
        )

    async def _relaunch(self, record: ModelRecord) -> None:
        record.restart_count += 1
        self.metrics.restarted(record.model_name)
        try:
            await self.runtime.launch(record)
        except PatioError as exc:
            self._schedule_restart(record, exc.message)
            await self._save()

    async def _save(self) -> None:
        try:
            await self.store.save()
        except PatioError as exc:
            log.error("%s", exc.message)

    async def _check_beside(self) -> None:
        beside = self.runtime.beside
        if beside is None:
            return
        beside.refresh()
        if beside.record.phase != "sleeping" or beside.record.busy is not None:
            return
        now = time.monotonic()
        if now - self._beside_checked < BESIDE_CHECK_EVERY:
            return
        self._beside_checked = now
        if await self.context.run_engine_query(beside.control.is_sleeping, 2.0) is False:
            log.warning("the engine beside Patio is awake again (it restarted?); rejoining the router")
            beside.record.transition("active")
            await beside.seams.rejoin_router()
            beside.seams.after_wake()

    # -- shutdown --------------------------------------------------------------------------------
    async def begin_shutdown(self) -> None:
        """Phase 1: stop supervising, SIGTERM every engine (they stop while Patio drains)."""
        now = time.monotonic()
        self._shutdown_deadline = now + self.context.core.shutdown_timeout - SHUTDOWN_RESERVE
        # SIGKILL after the stop grace, or a second before the budget ends, whichever comes first.
        self._kill_at = min(now + self.settings.stop_grace, self._shutdown_deadline - 1.0)
        self.runtime.closing = True
        await cancel_and_wait(self._task)
        self._task = None
        for record in self.store.models.values():
            record.transition("stopping")
        await self._save()  # killed before the end, the next Patio finishes these stops
        groups = await self.context.run_blocking(self.launcher.signal_all, signal.SIGTERM)
        if groups:
            log.info("stopping %d engine process group(s)", groups)

    async def finish_shutdown(self) -> None:
        """Phase 3: wait for the engines, SIGKILL what is left, save what could not be stopped."""
        leaders = [r.process for r in self.store.models.values() if r.process is not None]
        term_deadline = max(self._kill_at, time.monotonic())
        final = max(self._shutdown_deadline, time.monotonic() + 0.5)
        left = await self.context.run_engine(self.launcher.stop_all, term_deadline, final, leaders)
        for name in list(self.store.models):
            if name not in left:
                del self.store.models[name]
        if left:
            log.error("engines still running at the end of the shutdown: %s (the next Patio stops them)", left)
        await self._save()
