"""One model's state as the runtime keeps it: phase, process, restarts, operations.

Phases are AIBrix's (``ModelInstance.phase`` in ``aibrix/runtime/model_runtime.py``):

    booting     launched (or woken), /health not answered 200 yet
    active      serving: /health answered 200
    sleeping    asleep (vLLM /sleep, SGLang /release_memory_occupation)
    restarting  the process died; a relaunch is due at next_restart_at
    failed      the consecutive-failure budget is spent; only deactivate helps
    stopping    deactivate is stopping its process group

Mutated only on the event loop (the service and the supervisor), read there too.
"""

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Optional, Tuple

from patio.runtime.processes import EngineProcess
from patio.runtime.requests import ClaimRef

PHASES = ("booting", "active", "sleeping", "restarting", "failed", "stopping")
# Completed operation ids remembered per model and action (AIBrix keeps 128).
MAX_OPERATIONS = 128


def iso(wall: Optional[float]) -> Optional[str]:
    """RFC 3339 in UTC with microseconds, as pydantic writes a datetime (Go's time.Time reads it)."""
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: Any) -> Optional[float]:
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


@dataclass
class ModelRecord:
    model_name: str
    engine: str
    port: int
    ipc_name: str
    artifact_url: str  # display form: no credentials, no query string
    model_path: str  # what the engine loads (a local directory, or what the engine resolves)
    args: Tuple[Tuple[str, str], ...] = ()
    claim_ref: Optional[ClaimRef] = None
    sleep_capable: bool = False
    external: bool = False  # the engine Patio runs beside: never launched or stopped here
    phase: str = "booting"
    pid: Optional[int] = None
    start_time: Optional[str] = None
    launch_id: str = ""
    process: Optional[EngineProcess] = None
    restart_count: int = 0  # relaunches over the model's life
    failures: int = 0  # consecutive failed starts: the backoff and the budget
    last_error: Optional[str] = None
    last_transition: float = field(default_factory=time.time)
    next_restart_at: Optional[float] = None  # wall clock
    launched_at: float = field(default_factory=time.monotonic)
    ready_since: Optional[float] = None  # monotonic: when /health last turned 200
    ready: bool = False
    ever_ready: bool = False  # since the last launch
    sleep_level: int = 0
    log_path: str = ""
    credentials: Tuple[Tuple[str, str], ...] = field(default=(), repr=False)  # memory only
    busy: Optional[str] = None  # the operation running on this model now
    operations: Dict[str, "OrderedDict[str, None]"] = field(default_factory=dict)

    def transition(self, phase: str) -> bool:
        assert phase in PHASES, phase
        if phase == self.phase:
            return False
        self.phase = phase
        self.last_transition = time.time()
        if phase != "sleeping":
            self.sleep_level = 0
        return True

    @property
    def alive(self) -> bool:
        """The snapshot's ``alive``: a process runs (a booting engine is alive, a restarting one not)."""
        if self.external:
            return True
        return self.phase in ("booting", "active", "sleeping", "stopping") and self.process is not None

    def completed(self, action: str, operation_id: str) -> bool:
        return operation_id in self.operations.get(action, ())

    def remember(self, action: str, operation_id: str) -> None:
        done = self.operations.setdefault(action, OrderedDict())
        done[operation_id] = None
        done.move_to_end(operation_id)
        while len(done) > MAX_OPERATIONS:
            done.popitem(last=False)

    def listing(self, kv: Optional[Tuple[int, int, int]]) -> Dict[str, Any]:
        """One entry of ``GET /v1/runtime/models`` (AIBrix ``RuntimeModelInfo``)."""
        total, used, prealloc = kv if kv else (0, 0, 0)
        return {
            "model_name": self.model_name,
            "port": self.port,
            "ipc_name": self.ipc_name,
            "phase": self.phase,
            "ready": self.phase in ("active", "booting") and self.ready,
            "kv_used_bytes": used + prealloc,
            "kv_total_bytes": total,
        }

    def to_registry(self) -> Dict[str, Any]:
        return {
            "model_name": self.model_name,
            "engine": self.engine,
            "port": self.port,
            "ipc_name": self.ipc_name,
            "artifact_url": self.artifact_url,
            "model_path": self.model_path,
            "args": [list(pair) for pair in self.args],
            "claim_ref": self.claim_ref.to_json() if self.claim_ref else None,
            "sleep_capable": self.sleep_capable,
            "phase": self.phase,
            "pid": self.pid,
            "pid_start_time": self.start_time,
            "launch_id": self.launch_id,
            "restart_count": self.restart_count,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_transition": iso(self.last_transition),
            "next_restart_at": iso(self.next_restart_at),
            "sleep_level": self.sleep_level,
            "log_path": self.log_path,
            "operations": {action: list(ids) for action, ids in sorted(self.operations.items())},
        }


def _str(record: Dict[str, Any], key: str, allow_empty: bool = False) -> str:
    value = record.get(key)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise ValueError(f"{key} is missing or not a string")
    return value


def _int(record: Dict[str, Any], key: str, low: int, high: int, default: Optional[int] = None) -> int:
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} must be an integer from {low} to {high}")
    return value


def from_registry(record: Any) -> ModelRecord:
    """A record read back from the registry; ``ValueError`` names what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError("not an object")
    phase = record.get("phase", "booting")
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}")
    raw_pid = record.get("pid")
    if raw_pid is not None and (isinstance(raw_pid, bool) or not isinstance(raw_pid, int) or raw_pid <= 1):
        raise ValueError("pid must be an integer above 1")
    args = record.get("args") or []
    if not isinstance(args, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in args
    ):
        raise ValueError("args must be [flag, value] pairs")
    claim = record.get("claim_ref")
    claim_ref = None
    if claim is not None:
        if not isinstance(claim, dict) or not all(isinstance(claim.get(k), str) for k in ("namespace", "name", "uid")):
            raise ValueError("claim_ref must hold namespace, name and uid")
        claim_ref = ClaimRef(claim["namespace"], claim["name"], claim["uid"])
    operations: Dict[str, "OrderedDict[str, None]"] = {}
    raw_ops = record.get("operations") or {}
    if not isinstance(raw_ops, dict):
        raise ValueError("operations must be an object")
    for action, ids in raw_ops.items():
        if isinstance(ids, list):
            operations[str(action)] = OrderedDict((str(i), None) for i in ids[-MAX_OPERATIONS:])
    start = record.get("pid_start_time")
    last_error = record.get("last_error")
    return ModelRecord(
        model_name=_str(record, "model_name"),
        engine=_str(record, "engine"),
        port=_int(record, "port", 1, 65535),
        ipc_name=_str(record, "ipc_name"),
        artifact_url=_str(record, "artifact_url"),
        model_path=_str(record, "model_path"),
        args=tuple((p[0], p[1]) for p in args),
        claim_ref=claim_ref,
        sleep_capable=bool(record.get("sleep_capable", False)),
        phase=phase,
        pid=raw_pid,
        start_time=start if isinstance(start, str) else None,
        launch_id=_str(record, "launch_id", allow_empty=True) if "launch_id" in record else "",
        restart_count=_int(record, "restart_count", 0, 1 << 31, 0),
        failures=_int(record, "failures", 0, 1 << 31, 0),
        last_error=last_error if isinstance(last_error, str) else None,
        last_transition=parse_iso(record.get("last_transition")) or time.time(),
        next_restart_at=parse_iso(record.get("next_restart_at")),
        sleep_level=_int(record, "sleep_level", 0, 2, 0),
        log_path=_str(record, "log_path", allow_empty=True) if "log_path" in record else "",
        operations=operations,
    )
