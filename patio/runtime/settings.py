"""Engine-lifecycle settings: is the model-runtime API on, where engines run, how they are kept.

Off by default: with ``--enable-runtime`` unset nothing of ``patio.runtime`` but this
module is imported, no task runs and no route exists.  AIBrix's environment names
are read too (``AIBRIX_ENGINE_REGISTRY_PATH``, ``AIBRIX_WEIGHT_CACHE_DIR``), so its
manifests keep working.
"""

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Tuple

from patio.core_settings import CoreSettings
from patio.errors import ConfigError
from patio.options import (
    as_str,
    parse_bool,
    parse_choice,
    parse_int,
    pick,
    positive_int,
    positive_seconds,
    seconds,
)

# auto: ask the engine (vLLM's is_sleep_mode_available(), its /server_info; SGLang's
#       get_server_info); on: the operator says the engine sleeps; off: sleep answers 409.
SLEEP_MODES = ("auto", "on", "off")
# AIBrix's agent picks engine ports in this range (model_runtime.py ModelRuntime port_range).
DEFAULT_PORTS = (20000, 21000)


@dataclass(frozen=True)
class RuntimeSettings:
    enabled: bool = False
    registry_path: str = "/tmp/patio/runtime/engines.json"
    log_dir: str = "/tmp/patio/runtime/logs"
    python: str = sys.executable  # the engine image's Python (Patio runs inside that image)
    engine_host: str = "0.0.0.0"  # where launched engines listen (the pod IP is what routers use)
    port_range: Tuple[int, int] = DEFAULT_PORTS  # [low, high) for port 0
    max_models: int = 16  # engines this Patio runs at once; also bounds every per-model metric
    max_restarts: int = 5  # consecutive failed starts before a model is "failed"
    restart_base_delay: float = 2.0  # first restart delay; doubles per consecutive failure
    restart_max_delay: float = 60.0
    stable_after: float = 300.0  # ready this long: the consecutive-failure count starts again
    ready_timeout: float = 900.0  # launch to first ready /health; past it the start counts as failed
    start_check: float = 2.0  # activate watches the new process this long for an exit at once
    stop_grace: float = 10.0  # SIGTERM to SIGKILL of an engine's process group
    supervise_interval: float = 1.0
    probe_timeout: float = 1.0  # one /health probe of a launched engine
    sleep_mode: str = "auto"
    drain_timeout: float = 1.0  # a sleep waits this long for the engine to finish what it serves
    control_timeout: float = 50.0  # one sleep or wake call (AIBrix: 50 s, its controller waits 60)
    log_max_bytes: int = 16 * 1024 * 1024  # per engine log file; one older copy is kept beside it
    model_roots: Tuple[str, ...] = ()  # local artifact_url must lie below one; () = models/pvc roots
    weight_cache_dir: str = "/root/.cache/huggingface"  # AIBrix's served-model markers live below it
    shm_dir: str = "/dev/shm"  # kvcached segments (AIBrix's read_kv_segment/write_kv_limit)
    kvcached: bool = True  # set ENABLE_KVCACHED/KVCACHED_AUTOPATCH in engines, as AIBrix does
    nvidia_smi: str = "nvidia-smi"  # accelerators in the snapshot; absent on CPU-only nodes


def add_flags(parser: Any) -> None:
    add = parser.add_argument
    add(
        "--enable-runtime",
        nargs="?",
        const="true",
        metavar="true|false",
        help="serve AIBrix's model-runtime API and supervise engine processes (env PATIO_RUNTIME; default false)",
    )
    add("--runtime-registry", help="crash-safe engine registry (env PATIO_RUNTIME_REGISTRY)")
    add("--runtime-python", help="the Python that runs engines (env PATIO_RUNTIME_PYTHON; default Patio's own)")
    add("--runtime-ports", help="engine ports for port 0, LOW-HIGH (env PATIO_RUNTIME_PORTS; default 20000-21000)")
    add("--runtime-sleep-mode", help="auto, on or off (env PATIO_RUNTIME_SLEEP_MODE; default auto)")


def _port_range(setting: str, raw: str) -> Tuple[int, int]:
    low, sep, high = raw.strip().partition("-")
    if not sep:
        raise ConfigError(setting, f"expected LOW-HIGH, got {raw!r}")
    lo = parse_int(setting, low, minimum=1, maximum=65535)
    hi = parse_int(setting, high, minimum=1, maximum=65536)
    if hi <= lo:
        raise ConfigError(setting, f"HIGH must be above LOW, got {raw!r}")
    return lo, hi


def _absolute(setting: str, raw: str) -> str:
    value = raw.strip()
    if not os.path.isabs(value):
        raise ConfigError(setting, f"must be an absolute path, got {raw!r}")
    return os.path.normpath(value)


def _roots(setting: str, raw: str) -> Tuple[str, ...]:
    return tuple(_absolute(setting, part) for part in raw.split(":") if part.strip())


def from_sources(args: argparse.Namespace, env: Mapping[str, str], core: CoreSettings) -> RuntimeSettings:
    state_dir = pick(args, env, "state_dir", ("PATIO_STATE_DIR",), "/tmp/patio", as_str)
    home = env.get("HOME") or "/root"
    settings = RuntimeSettings(
        enabled=pick(args, env, "enable_runtime", ("PATIO_RUNTIME",), False, parse_bool),
        registry_path=pick(
            args,
            env,
            "runtime_registry",
            ("PATIO_RUNTIME_REGISTRY", "AIBRIX_ENGINE_REGISTRY_PATH"),
            os.path.join(state_dir, "runtime", "engines.json"),
            _absolute,
        ),
        log_dir=pick(
            args,
            env,
            "runtime_log_dir",
            ("PATIO_RUNTIME_LOG_DIR",),
            os.path.join(state_dir, "runtime", "logs"),
            _absolute,
        ),
        python=pick(args, env, "runtime_python", ("PATIO_RUNTIME_PYTHON",), sys.executable, _absolute),
        engine_host=pick(args, env, "runtime_engine_host", ("PATIO_RUNTIME_ENGINE_HOST",), "0.0.0.0", as_str),
        port_range=pick(args, env, "runtime_ports", ("PATIO_RUNTIME_PORTS",), DEFAULT_PORTS, _port_range),
        max_models=pick(
            args,
            env,
            "runtime_max_models",
            ("PATIO_RUNTIME_MAX_MODELS",),
            16,
            lambda s, r: parse_int(s, r, minimum=1, maximum=256),
        ),
        max_restarts=pick(args, env, "runtime_max_restarts", ("PATIO_RUNTIME_MAX_RESTARTS",), 5, positive_int),
        restart_base_delay=pick(
            args, env, "runtime_restart_delay", ("PATIO_RUNTIME_RESTART_DELAY",), 2.0, positive_seconds
        ),
        restart_max_delay=pick(
            args, env, "runtime_restart_max_delay", ("PATIO_RUNTIME_RESTART_MAX_DELAY",), 60.0, positive_seconds
        ),
        stable_after=pick(args, env, "runtime_stable_after", ("PATIO_RUNTIME_STABLE_AFTER",), 300.0, seconds),
        ready_timeout=pick(
            args, env, "runtime_ready_timeout", ("PATIO_RUNTIME_READY_TIMEOUT",), 900.0, positive_seconds
        ),
        start_check=pick(args, env, "runtime_start_check", ("PATIO_RUNTIME_START_CHECK",), 2.0, seconds),
        stop_grace=pick(args, env, "runtime_stop_grace", ("PATIO_RUNTIME_STOP_GRACE",), 10.0, positive_seconds),
        supervise_interval=pick(
            args, env, "runtime_supervise_interval", ("PATIO_RUNTIME_SUPERVISE_INTERVAL",), 1.0, positive_seconds
        ),
        probe_timeout=pick(args, env, "runtime_probe_timeout", ("PATIO_RUNTIME_PROBE_TIMEOUT",), 1.0, positive_seconds),
        sleep_mode=pick(
            args,
            env,
            "runtime_sleep_mode",
            ("PATIO_RUNTIME_SLEEP_MODE",),
            "auto",
            lambda s, r: parse_choice(s, r, SLEEP_MODES),
        ),
        drain_timeout=pick(args, env, "runtime_drain_timeout", ("PATIO_RUNTIME_DRAIN_TIMEOUT",), 1.0, positive_seconds),
        control_timeout=pick(
            args, env, "runtime_control_timeout", ("PATIO_RUNTIME_CONTROL_TIMEOUT",), 50.0, positive_seconds
        ),
        log_max_bytes=pick(
            args,
            env,
            "runtime_log_max_bytes",
            ("PATIO_RUNTIME_LOG_MAX_BYTES",),
            16 * 1024 * 1024,
            lambda s, r: parse_int(s, r, minimum=64 * 1024),
        ),
        model_roots=pick(args, env, "runtime_model_roots", ("PATIO_RUNTIME_MODEL_ROOTS",), (), _roots),
        weight_cache_dir=pick(
            args,
            env,
            "runtime_weight_cache_dir",
            ("PATIO_RUNTIME_WEIGHT_CACHE_DIR", "AIBRIX_WEIGHT_CACHE_DIR"),
            os.path.join(home, ".cache", "huggingface"),
            _absolute,
        ),
        shm_dir=pick(args, env, "runtime_shm_dir", ("PATIO_RUNTIME_SHM_DIR",), "/dev/shm", _absolute),
        kvcached=pick(args, env, "runtime_kvcached", ("PATIO_RUNTIME_KVCACHED",), True, parse_bool),
        nvidia_smi=pick(args, env, "runtime_nvidia_smi", ("PATIO_RUNTIME_NVIDIA_SMI",), "nvidia-smi", as_str),
    )
    if settings.restart_max_delay < settings.restart_base_delay:
        raise ConfigError("PATIO_RUNTIME_RESTART_MAX_DELAY", "must not be below PATIO_RUNTIME_RESTART_DELAY")
    low, high = settings.port_range
    if low <= core.port < high:
        raise ConfigError("--runtime-ports", f"must not include Patio's own port {core.port}")
    return settings
