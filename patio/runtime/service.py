"""The model runtime: activate, deactivate, sleep, wake, kv-limit, list, snapshot.

AIBrix's ``ModelRuntime`` (``aibrix/runtime/model_runtime.py``) field for field, on
Patio's supervisor.  The rules a caller meets:

- activate is idempotent: the same name again answers the engine it has (a second
  activation while the first starts waits for it: one engine); another artifact, engine,
  port or flag set under that name is a 409, as is a model being deactivated or failed;
- deactivate of an unknown name succeeds (AIBrix); it answers once the whole process
  group is gone and the port is free;
- sleep, wake and kv-limit carry an ``operation_id``: the same id again is answered
  ``applied: false`` without acting; a wake of an awake engine and a sleep of a sleeping
  one too.  Another operation still running on the model is a 409 (a sleep that drains);
  an engine still serving after the drain is a 409; one that cannot sleep a 409;
- the engine beside Patio is listed under its served name; activate and deactivate of it
  are 409.

Event loop only; everything that blocks runs in the context's pools.
"""

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from patio.artifacts.uri import display_uri
from patio.component import AppContext
from patio.errors import BadRequest, Conflict, InternalError, NotFound, PatioError, ServiceUnavailable
from patio.runtime import engines, kvcache, markers, processes
from patio.runtime.artifacts import ModelArtifacts
from patio.runtime.beside import Beside
from patio.runtime.control import CONTRACTS, Activity, EngineBusy, EngineControl, Unsupported
from patio.runtime.enginelog import remove as remove_log
from patio.runtime.gpus import Gpus, peak_bytes
from patio.runtime.launcher import Launcher, LaunchFailed
from patio.runtime.metrics import RuntimeMetrics
from patio.runtime.records import ModelRecord, iso
from patio.runtime.requests import Activate, Operation
from patio.runtime.settings import RuntimeSettings
from patio.runtime.store import ModelStore

log = logging.getLogger("patio.runtime")

# AIBrix's snapshot reads each engine's /metrics with this timeout (engine_request_activity).
ACTIVITY_TIMEOUT = 0.5
# AIBrix KV_UNKNOWN: no segment yet is not a measured zero.
KV_UNKNOWN = -1
# How long a request waits for the adoption at start before it is answered 503.
ADOPTION_WAIT = 30.0


@dataclass(frozen=True)
class OperationResult:
    record: ModelRecord
    operation_id: str
    applied: bool

    def to_json(self) -> Dict[str, Any]:
        """AIBrix ``RuntimeOperationResponse``."""
        return {
            "status": "success",
            "model_name": self.record.model_name,
            "operation_id": self.operation_id,
            "applied": self.applied,
            "phase": self.record.phase,
        }


class Runtime:
    def __init__(
        self,
        context: AppContext,
        settings: RuntimeSettings,
        store: ModelStore,
        launcher: Launcher,
        artifacts: ModelArtifacts,
        metrics_factory: Any,
        beside: Optional[Beside] = None,
        engine_api_key: Optional[str] = None,
        gpus: Optional[Gpus] = None,
        patio_port: int = 0,
    ) -> None:
        self.context = context
        self.settings = settings
        self.store = store
        self.launcher = launcher
        self.artifacts = artifacts
        self.beside = beside
        self.engine_api_key = engine_api_key
        self.gpus = gpus or Gpus(settings.nvidia_smi)
        self.patio_port = patio_port
        self.metrics: RuntimeMetrics = metrics_factory(self.records)
        self.closing = False
        # Set once the engines of an earlier Patio are adopted: until then no answer is given,
        # so a controller never sees an empty list and starts a model that is running.
        self.adopted = asyncio.Event()

    async def wait_adopted(self) -> None:
        try:
            await asyncio.wait_for(self.adopted.wait(), timeout=ADOPTION_WAIT)
        except asyncio.TimeoutError:
            raise ServiceUnavailable(
                "Patio is still adopting the engines it ran before its restart; try again"
            ) from None

    # -- lookups ---------------------------------------------------------------------------
    def records(self) -> List[ModelRecord]:
        found = self.store.sorted()
        if self.beside is not None and self.beside.name:
            found.insert(0, self.beside.record)
        return found

    def control(self, record: ModelRecord) -> EngineControl:
        if record.external and self.beside is not None:
            return self.beside.control
        return EngineControl(CONTRACTS[record.engine], f"http://127.0.0.1:{record.port}", self.engine_api_key)

    async def _beside_name(self) -> str:
        if self.beside is None:
            return ""
        if self.beside.should_ask_name():
            await self.context.run_engine_query(self.beside.learn_name)
        return self.beside.name

    async def find(self, name: str) -> ModelRecord:
        record = self.store.get(name)
        if record is not None:
            return record
        if self.beside is not None and name == await self._beside_name():
            return self.beside.record
        raise NotFound(f"model {name!r} is not active", param="model_name")

    async def _refuse_beside(self, name: str, what: str) -> None:
        if self.beside is not None and name == await self._beside_name():
            raise Conflict(
                f"{name!r} is the engine Patio runs beside (INFERENCE_ENGINE_ENDPOINT); "
                f"Patio did not start it and cannot {what} it",
                param="model_name",
            )

    # -- activate ----------------------------------------------------------------------------
    async def activate(self, request: Activate) -> ModelRecord:
        if self.closing:
            raise ServiceUnavailable("Patio is shutting down; no engine is started now")
        engines.check_args(engines.KINDS[request.engine], request.args)
        await self._refuse_beside(request.model_name, "activate")
        existing = self.store.get(request.model_name)
        if existing is not None and (existing.phase == "stopping" or not self.store.locked(request.model_name)):
            return self._existing(existing, request)
        async with self.store.lock(request.model_name):
            existing = self.store.get(request.model_name)
            if existing is not None:
                return self._existing(existing, request)
            if len(self.store.models) >= self.settings.max_models:
                self.metrics.activations.inc(request.engine, "refused")
                raise Conflict(
                    f"{len(self.store.models)} models are active, the most this Patio runs "
                    "(PATIO_RUNTIME_MAX_MODELS); deactivate one first"
                )
            try:
                record = await self._start(request)
            except PatioError:
                self.metrics.activations.inc(request.engine, "failed")
                raise
        self.metrics.activations.inc(request.engine, "started")
        return record

    def _existing(self, record: ModelRecord, request: Activate) -> ModelRecord:
        if record.phase == "stopping":
            raise Conflict(
                f"model {record.model_name!r} is being deactivated; activate it again once that finished",
                param="model_name",
            )
        if record.phase == "failed":
            raise Conflict(
                f"model {record.model_name!r} exhausted its restart budget ({record.last_error}); "
                "deactivate it before activating it again",
                param="model_name",
            )
        wanted = (request.engine, request.ipc_name, request.args)
        held = (record.engine, record.ipc_name, record.args)
        # Compared in display form: the record keeps no query string (a presigned URL's signature).
        same_artifact = (
            display_uri(request.artifact_url) == record.artifact_url or request.artifact_url == record.model_path
        )
        if wanted != held or not same_artifact or request.port not in (0, record.port):
            raise Conflict(
                f"model {record.model_name!r} is already active with another artifact, engine, port or "
                "engine flags; deactivate it first",
                param="model_name",
            )
        self.metrics.activations.inc(record.engine, "existing")
        return record

    async def _choose_port(self, requested: int) -> int:
        """A free port, reserved for the caller (who releases ``store.reserved_ports`` once the
        record holds it).  Reserved before the bind check awaits: two activations at once never
        pick the same port."""
        used = self.store.used_ports() | {self.patio_port}
        if self.beside is not None:
            used.add(self.beside.record.port)
        host = self.settings.engine_host
        if requested:
            if requested in used:
                raise Conflict(f"port {requested} is in use by Patio or another model", param="port")
            candidates = [requested]
        else:
            low, high = self.settings.port_range
            candidates = [port for port in range(low, high) if port not in used]
        for port in candidates:
            if port in self.store.used_ports():  # taken while an earlier check awaited
                continue
            self.store.reserved_ports.add(port)
            if await self.context.run_blocking(processes.port_free, host, port):
                return port
            self.store.reserved_ports.discard(port)
        if requested:
            raise Conflict(f"port {requested} is in use on {host}", param="port")
        low, high = self.settings.port_range
        raise Conflict(f"no free port in {low}-{high - 1} (PATIO_RUNTIME_PORTS)", param="port")

    async def _start(self, request: Activate) -> ModelRecord:
        if request.engine == "vllm":
            await self._check_parallelism(request)
        port = await self._choose_port(request.port)
        try:
            model_path, display = await self.artifacts.resolve(request)
            capable, _why = await self.context.run_engine(self.launcher.sleep_mode_available, request.engine)
            record = ModelRecord(
                model_name=request.model_name,
                engine=request.engine,
                port=port,
                ipc_name=request.ipc_name,
                artifact_url=display,
                model_path=model_path,
                args=request.args,
                claim_ref=request.claim_ref,
                sleep_capable=capable,
                credentials=request.credentials,
            )
            self.store.models[record.model_name] = record
        finally:
            self.store.reserved_ports.discard(port)
        record.busy = "activate"
        try:
            await self.launch(record)
            code = await self.context.run_engine(self.launcher.watch_start, record.process, self.settings.start_check)
        except BaseException:
            await self._discard(record)
            raise
        finally:
            record.busy = None
        if code is not None:
            reason = self.launcher.exit_reason(record, code)
            await self._discard(record)
            raise LaunchFailed(f"the engine of {record.model_name} did not start: {reason}")
        try:
            await self.context.run_blocking(
                markers.write_marker, self.settings.weight_cache_dir, record.model_name, record.artifact_url
            )
        except OSError as exc:  # a locality hint: never fails an activation (AIBrix write_cache_marker)
            log.warning("cannot write the served-model marker for %s: %s", record.model_name, exc.strerror or exc)
        return record

    async def _check_parallelism(self, request: Activate) -> None:
        """AIBrix ``validate_vllm_parallelism``: TP x PP must match the visible cards, DP must be 1."""
        args = dict(request.args)

        def positive(flag: str) -> int:
            raw = args.get(flag, args.get(flag.replace("-", "_"), "1"))
            if not raw.isdigit() or int(raw) < 1:
                raise BadRequest(f"{flag} must be a positive integer", param="engine_config")
            return int(raw)

        if "--gpu-memory-utilization" in args and self.settings.kvcached:
            raise BadRequest(
                "--gpu-memory-utilization is incompatible with kvcached (set PATIO_RUNTIME_KVCACHED=false to use it)",
                param="engine_config",
            )
        parallelism = positive("--tensor-parallel-size") * positive("--pipeline-parallel-size")
        data = positive("--data-parallel-size")
        if data != 1:
            raise BadRequest(f"--data-parallel-size={data} is not supported for runtime models", param="engine_config")
        cards, _usage = await self.context.run_blocking(self.gpus.observe)
        if cards and len(cards) != parallelism:
            raise BadRequest(
                f"vLLM parallelism {parallelism} must equal the {len(cards)} GPU(s) visible to the runtime",
                param="engine_config",
            )
        if not cards and parallelism > 1:
            raise InternalError("cannot check the tensor/pipeline parallelism: no GPU is visible to the runtime")

    async def launch(self, record: ModelRecord) -> None:
        """Start ``record``'s engine (first start or restart).  The intent is saved before the
        process exists, its PID right after: a crash in between leaves a record the next Patio
        completes by the engine's markers, never a second engine."""
        record.launch_id = os.urandom(8).hex()
        record.process, record.pid, record.start_time = None, None, None
        record.ready = record.ever_ready = False
        record.ready_since = None
        record.launched_at = time.monotonic()
        record.next_restart_at = None
        record.transition("booting")
        await self.store.save()
        process = await self.context.run_engine(self.launcher.launch, record, record.credentials)
        record.process, record.pid, record.start_time = process, process.pid, process.start_time
        await self.store.save()

    async def _discard(self, record: ModelRecord) -> None:
        """Stop and forget a model whose activation failed."""
        leader = record.process
        await self.context.run_engine(self.launcher.stop_model, record.model_name, 0.0, leader)
        self.store.models.pop(record.model_name, None)
        self.metrics.forget(record.model_name)
        try:
            await self.store.save()
        except PatioError as exc:
            log.error("%s", exc.message)

    # -- deactivate --------------------------------------------------------------------------
    async def deactivate(self, name: str, mode: str) -> None:
        await self._refuse_beside(name, "deactivate")
        if self.store.get(name) is None:
            return  # AIBrix: deactivating what is not there succeeds
        if mode != "stop":
            log.info("deactivate mode %r of %s is treated as stop (as AIBrix does)", mode, name)
        async with self.store.lock(name):
            record = self.store.get(name)
            if record is None:
                return
            record.transition("stopping")
            record.busy = "deactivate"
            await self.store.save()
            try:
                gone = await self.context.run_engine(
                    self.launcher.stop_model, name, self.settings.stop_grace, record.process
                )
            finally:
                record.busy = None
            if not gone:
                record.last_error = "the engine's processes did not exit after SIGKILL"
                await self.store.save()
                raise PatioError(f"the engine of {name} did not stop; it stays listed as stopping", status=500)
            self.store.models.pop(name, None)
            self.metrics.forget(name)
            await self.store.save()
            if record.log_path:
                await self.context.run_blocking(remove_log, record.log_path)
        self.store.forget_lock(name)
        log.info("deactivated %s: its process group is gone and port %d is free", name, record.port)

    # -- sleep, wake, kv-limit ---------------------------------------------------------------
    def _busy(self, record: ModelRecord) -> None:
        """409 while another operation runs on the model: sleep and wake never wait behind one."""
        if record.busy is not None or self.store.locked(record.model_name):
            doing = record.busy or "another operation"
            raise Conflict(
                f"model {record.model_name!r} is busy: {doing} is in progress; try again", param="model_name"
            )

    async def sleep(self, op: Operation) -> OperationResult:
        record = await self.find(op.model_name)
        if record.completed("sleep", op.operation_id) or record.phase == "sleeping":
            record.remember("sleep", op.operation_id)
            self.metrics.transition(record.model_name, "sleep", "skipped")
            return OperationResult(record, op.operation_id, False)
        self._busy(record)
        started = time.monotonic()
        try:
            if record.external:
                assert self.beside is not None
                capable, why = await self.context.run_engine_query(self.beside.sleep_capable, self.settings.sleep_mode)
            else:
                capable, why = record.sleep_capable, "the engine was started without its sleep mode"
                if not capable:
                    why = (await self.context.run_engine(self.launcher.sleep_mode_available, record.engine))[1] or why
            if not capable:
                raise Unsupported(f"sleep is unsupported for {record.model_name}: {why}", param="model_name")
            if record.phase != "active":
                raise Conflict(
                    f"model {record.model_name!r} is {record.phase}; only an active engine is put to sleep",
                    param="model_name",
                )
            self._busy(record)  # checked again: the capability look above awaited
            async with self.store.lock(record.model_name):
                await self._do_sleep(record, op)
        except EngineBusy:
            self.metrics.transition(record.model_name, "sleep", "busy", time.monotonic() - started)
            raise
        except Unsupported:
            self.metrics.transition(record.model_name, "sleep", "unsupported", time.monotonic() - started)
            raise
        except PatioError:
            self.metrics.transition(record.model_name, "sleep", "failed", time.monotonic() - started)
            raise
        self.metrics.transition(record.model_name, "sleep", "applied", time.monotonic() - started)
        return OperationResult(record, op.operation_id, True)

    async def _do_sleep(self, record: ModelRecord, op: Operation) -> None:
        record.busy = "sleep"
        beside = self.beside if record.external else None
        try:
            try:
                if beside is not None:
                    beside.going_to_sleep = True  # /ready: 503 asleep from here on
                    await beside.seams.leave_router()
                await self.context.run_engine(
                    self.control(record).sleep,
                    record.model_name,
                    op.level,
                    self.settings.drain_timeout,
                    self.settings.control_timeout,
                )
            except BaseException:
                if beside is not None:
                    beside.going_to_sleep = False
                    await beside.seams.rejoin_router()
                raise
            record.transition("sleeping")
            record.sleep_level = op.level
            record.ready = False
            record.remember("sleep", op.operation_id)
            if beside is not None:
                beside.going_to_sleep = False
            else:
                await self.store.save()
            log.info("%s is asleep (level %d)", record.model_name, op.level)
        finally:
            record.busy = None

    async def wake(self, op: Operation) -> OperationResult:
        record = await self.find(op.model_name)
        if record.completed("wake", op.operation_id) or record.phase != "sleeping":
            record.remember("wake", op.operation_id)
            self.metrics.transition(record.model_name, "wake", "skipped")
            return OperationResult(record, op.operation_id, False)
        self._busy(record)
        started = time.monotonic()
        await self.store.lock(record.model_name).acquire()
        record.busy = "wake"
        try:
            control = self.control(record)
            await self.context.run_engine(control.wake, self.settings.control_timeout)
            healthy = await self.context.run_engine_query(control.healthy, self.settings.probe_timeout)
            record.transition("active" if healthy else "booting")
            record.ready = healthy
            record.ready_since = time.monotonic() if healthy else None
            record.remember("wake", op.operation_id)
            if record.external and self.beside is not None:
                await self.beside.seams.rejoin_router()
                self.beside.seams.after_wake()
            else:
                await self.store.save()
        except PatioError:
            self.metrics.transition(record.model_name, "wake", "failed", time.monotonic() - started)
            raise
        finally:
            record.busy = None
            self.store.lock(record.model_name).release()
        self.metrics.transition(record.model_name, "wake", "applied", time.monotonic() - started)
        log.info("%s is awake", record.model_name)
        return OperationResult(record, op.operation_id, True)

    async def kv_limit(self, op: Operation) -> OperationResult:
        record = await self.find(op.model_name)
        if record.completed("kv-limit", op.operation_id):
            self.metrics.kv_limit(record.model_name, "skipped")
            return OperationResult(record, op.operation_id, False)
        try:
            await self.context.run_engine(kvcache.write_limit, self.settings.shm_dir, record.ipc_name, op.limit_bytes)
        except kvcache.SegmentMissing:
            self.metrics.kv_limit(record.model_name, "unsupported")
            raise Unsupported(
                f"model {record.model_name!r} has no kvcached segment "
                f"({self.settings.shm_dir}/{record.ipc_name or '<none>'}); its KV limit cannot be set",
                param="model_name",
            ) from None
        except (kvcache.SegmentLocked, OSError) as exc:
            self.metrics.kv_limit(record.model_name, "failed")
            raise ServiceUnavailable(f"cannot set the KV limit of {record.model_name}: {exc}") from None
        record.remember("kv-limit", op.operation_id)
        self.metrics.kv_limit(record.model_name, "applied")
        if not record.external:
            await self.store.save()
        return OperationResult(record, op.operation_id, True)

    # -- views -------------------------------------------------------------------------------
    async def _kv(self, records: List[ModelRecord]) -> List[Optional[Tuple[int, int, int]]]:
        shm = self.settings.shm_dir
        return await self.context.run_blocking(lambda: [kvcache.read_segment(shm, r.ipc_name) for r in records])

    async def listing(self) -> Dict[str, Any]:
        """``GET /v1/runtime/models`` (AIBrix ``ListRuntimeModelsResponse``)."""
        if self.beside is not None:
            await self._beside_name()
            self.beside.refresh()
        records = self.records()
        kv = await self._kv(records)
        return {"models": [r.listing(k) for r, k in zip(records, kv)]}

    async def snapshot(self) -> Dict[str, Any]:
        """``GET /v1/runtime/snapshot`` (AIBrix ``RuntimeSnapshotResponse``)."""
        if self.beside is not None:
            await self._beside_name()
            self.beside.refresh()
        records = self.records()
        kv = await self._kv(records)
        cards, usage = await self.context.run_blocking(self.gpus.observe)
        activity = await asyncio.gather(
            *(
                self.context.run_engine_query(self.control(r).activity, r.model_name, ACTIVITY_TIMEOUT)
                if r.phase == "active"
                else _unobserved()
                for r in records
            )
        )
        pids = await self.context.run_blocking(
            lambda: [processes.group_members(r.pid) if r.pid and usage else [] for r in records]
        )
        cached = await self.context.run_blocking(markers.cached_artifacts, self.settings.weight_cache_dir)
        models = []
        for record, segment, seen, members in zip(records, kv, activity, pids):
            if segment is None:
                used = capacity = KV_UNKNOWN
            else:
                total, in_use, prealloc = segment
                used, capacity = in_use + prealloc, total
            models.append(
                {
                    "model_name": record.model_name,
                    "artifact_url": record.artifact_url,
                    "claim_ref": record.claim_ref.to_json() if record.claim_ref else None,
                    "port": record.port,
                    "ipc_name": record.ipc_name,
                    "phase": record.phase,
                    "ready": record.phase in ("active", "booting") and record.ready,
                    "alive": record.alive,
                    "restart_count": record.restart_count,
                    "last_error": record.last_error,
                    "last_transition": iso(record.last_transition),
                    "kv_used_bytes": used,
                    "kv_capacity_bytes": capacity,
                    "hbm_peak_bytes": peak_bytes(members, usage),
                    "sleeping_footprint_bytes": None,
                    "request_metrics_observed": seen.observed,
                    "requests_running": seen.running,
                    "requests_waiting": seen.waiting,
                    "request_success_total": seen.success_total,
                }
            )
        return {
            "observed_at": iso(time.time()),
            "accelerators": [card.to_json() for card in cards],
            "models": models,
            "cached_artifacts": cached,
        }


async def _unobserved() -> Activity:
    return Activity()
