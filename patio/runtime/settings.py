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
from typing import Mapping, Tuple

from patio.core_settings import CoreSettings
from patio.errors import ConfigError
from patio.lora.settings import SETTINGS as LORA
from patio.options import (
    Section,
    Setting,
    absolute_path,
    as_str,
    choice,
    fields_of,
    integer,
    parse_bool,
    parse_int,
    positive_int,
    positive_seconds,
    seconds,
)

# auto: ask the engine (vLLM's is_sleep_mode_available(), its /server_info; SGLang's
#       get_server_info); on: the operator says the engine sleeps; off: sleep answers 409.
SLEEP_MODES = ("auto", "on", "off")
# AIBrix's agent picks engine ports in this range (model_runtime.py ModelRuntime port_range).
DEFAULT_PORTS = (20000, 21000)


def _port_range(setting: str, raw: str) -> Tuple[int, int]:
    low, sep, high = raw.strip().partition("-")
    if not sep:
        raise ConfigError(setting, f"expected LOW-HIGH, got {raw!r}")
    lo = parse_int(setting, low, minimum=1, maximum=65535)
    hi = parse_int(setting, high, minimum=1, maximum=65536)
    if hi <= lo:
        raise ConfigError(setting, f"HIGH must be above LOW, got {raw!r}")
    return lo, hi


def _roots(setting: str, raw: str) -> Tuple[str, ...]:
    return tuple(absolute_path(setting, part) for part in raw.split(":") if part.strip())


SETTINGS = Section(
    "runtime",
    "Engine lifecycle: the model-runtime API and the engine supervisor",
    (
        Setting(
            "enabled",
            "--enable-runtime",
            "PATIO_RUNTIME",
            False,
            parse_bool,
            "serve AIBrix's model-runtime API and supervise engine processes",
            switch=True,
        ),
        Setting(
            "registry_path",
            "--runtime-registry",
            "PATIO_RUNTIME_REGISTRY AIBRIX_ENGINE_REGISTRY_PATH",
            None,
            absolute_path,
            "crash-safe registry of the engines Patio runs",
            shown="$PATIO_STATE_DIR/runtime/engines.json",
        ),
        Setting(
            "log_dir",
            "",
            "PATIO_RUNTIME_LOG_DIR",
            None,
            absolute_path,
            "where each engine's bounded log is kept",
            shown="$PATIO_STATE_DIR/runtime/logs",
        ),
        Setting(
            "python",
            "--runtime-python",
            "PATIO_RUNTIME_PYTHON",
            None,
            absolute_path,
            "the Python that runs engines (the engine image's)",
            shown="Patio's own interpreter",
        ),
        Setting(
            "engine_host",
            "",
            "PATIO_RUNTIME_ENGINE_HOST",
            "0.0.0.0",
            as_str,
            "where launched engines listen (the pod IP is what routers use)",
        ),
        Setting(
            "port_range",
            "--runtime-ports",
            "PATIO_RUNTIME_PORTS",
            DEFAULT_PORTS,
            _port_range,
            "engine ports for port 0, LOW-HIGH (high excluded)",
            shown="20000-21000",
        ),
        Setting(
            "max_models",
            "",
            "PATIO_RUNTIME_MAX_MODELS",
            16,
            integer(1, 256),
            "engines this Patio runs at once; also bounds every per-model metric",
        ),
        Setting(
            "max_restarts",
            "",
            "PATIO_RUNTIME_MAX_RESTARTS",
            5,
            positive_int,
            "consecutive failed starts before a model is failed",
        ),
        Setting(
            "restart_base_delay",
            "",
            "PATIO_RUNTIME_RESTART_DELAY",
            2.0,
            positive_seconds,
            "first restart delay; doubles per consecutive failure",
        ),
        Setting(
            "restart_max_delay",
            "",
            "PATIO_RUNTIME_RESTART_MAX_DELAY",
            60.0,
            positive_seconds,
            "longest restart delay",
        ),
        Setting(
            "stable_after",
            "",
            "PATIO_RUNTIME_STABLE_AFTER",
            300.0,
            seconds,
            "seconds ready after which the consecutive-failure count starts again",
        ),
        Setting(
            "ready_timeout",
            "",
            "PATIO_RUNTIME_READY_TIMEOUT",
            900.0,
            positive_seconds,
            "seconds from launch to the first ready /health; past it the start counts as failed",
        ),
        Setting(
            "start_check",
            "",
            "PATIO_RUNTIME_START_CHECK",
            2.0,
            seconds,
            "seconds activate watches a new engine process for an exit at once",
        ),
        Setting(
            "stop_grace",
            "",
            "PATIO_RUNTIME_STOP_GRACE",
            10.0,
            positive_seconds,
            "seconds from SIGTERM to SIGKILL of an engine's process group",
        ),
        Setting(
            "supervise_interval",
            "",
            "PATIO_RUNTIME_SUPERVISE_INTERVAL",
            1.0,
            positive_seconds,
            "seconds between two checks of every engine",
        ),
        Setting(
            "probe_timeout",
            "",
            "PATIO_RUNTIME_PROBE_TIMEOUT",
            1.0,
            positive_seconds,
            "seconds one /health probe of a launched engine may take",
        ),
        Setting(
            "sleep_mode",
            "--runtime-sleep-mode",
            "PATIO_RUNTIME_SLEEP_MODE",
            "auto",
            choice(*SLEEP_MODES),
            "auto (ask the engine), on or off: whether engines can sleep",
        ),
        Setting(
            "drain_timeout",
            "",
            "PATIO_RUNTIME_DRAIN_TIMEOUT",
            1.0,
            positive_seconds,
            "seconds a sleep waits for the engine to finish what it serves",
        ),
        Setting(
            "control_timeout",
            "",
            "PATIO_RUNTIME_CONTROL_TIMEOUT",
            50.0,
            positive_seconds,
            "seconds one sleep or wake call may take (AIBrix: 50, its controller waits 60)",
        ),
        Setting(
            "log_max_bytes",
            "",
            "PATIO_RUNTIME_LOG_MAX_BYTES",
            16 * 1024 * 1024,
            integer(64 * 1024),
            "bytes per engine log file; one older copy is kept beside it",
        ),
        Setting(
            "model_roots",
            "",
            "PATIO_RUNTIME_MODEL_ROOTS",
            (),
            _roots,
            "colon-separated roots a local artifact_url must lie below",
            shown="the models and PVC roots",
        ),
        Setting(
            "weight_cache_dir",
            "",
            "PATIO_RUNTIME_WEIGHT_CACHE_DIR AIBRIX_WEIGHT_CACHE_DIR",
            None,
            absolute_path,
            "where AIBrix's served-model markers live",
            shown="$HOME/.cache/huggingface",
        ),
        Setting(
            "shm_dir",
            "",
            "PATIO_RUNTIME_SHM_DIR",
            "/dev/shm",
            absolute_path,
            "kvcached segments (AIBrix's read_kv_segment/write_kv_limit layout)",
        ),
        Setting(
            "kvcached",
            "",
            "PATIO_RUNTIME_KVCACHED",
            True,
            parse_bool,
            "set ENABLE_KVCACHED/KVCACHED_AUTOPATCH in engines, as AIBrix does",
        ),
        Setting(
            "nvidia_smi",
            "",
            "PATIO_RUNTIME_NVIDIA_SMI",
            "nvidia-smi",
            as_str,
            "the accelerators in the snapshot (absent on CPU-only nodes)",
        ),
    ),
)


@dataclass(frozen=True)
class RuntimeSettings:
    enabled: bool = SETTINGS.default("enabled")
    registry_path: str = "/tmp/patio/runtime/engines.json"
    log_dir: str = "/tmp/patio/runtime/logs"
    python: str = sys.executable  # the engine image's Python (Patio runs inside that image)
    engine_host: str = SETTINGS.default("engine_host")  # the pod IP is what routers use
    port_range: Tuple[int, int] = SETTINGS.default("port_range")  # [low, high) for port 0
    max_models: int = SETTINGS.default("max_models")  # also bounds every per-model metric
    max_restarts: int = SETTINGS.default("max_restarts")
    restart_base_delay: float = SETTINGS.default("restart_base_delay")
    restart_max_delay: float = SETTINGS.default("restart_max_delay")
    stable_after: float = SETTINGS.default("stable_after")
    ready_timeout: float = SETTINGS.default("ready_timeout")
    start_check: float = SETTINGS.default("start_check")
    stop_grace: float = SETTINGS.default("stop_grace")
    supervise_interval: float = SETTINGS.default("supervise_interval")
    probe_timeout: float = SETTINGS.default("probe_timeout")
    sleep_mode: str = SETTINGS.default("sleep_mode")
    drain_timeout: float = SETTINGS.default("drain_timeout")
    control_timeout: float = SETTINGS.default("control_timeout")
    log_max_bytes: int = SETTINGS.default("log_max_bytes")
    model_roots: Tuple[str, ...] = SETTINGS.default("model_roots")  # () = the models and PVC roots
    weight_cache_dir: str = "/root/.cache/huggingface"
    shm_dir: str = SETTINGS.default("shm_dir")
    kvcached: bool = SETTINGS.default("kvcached")
    nvidia_smi: str = SETTINGS.default("nvidia_smi")


def from_sources(args: argparse.Namespace, env: Mapping[str, str], core: CoreSettings) -> RuntimeSettings:
    values = SETTINGS.read(args, env)
    state_dir = LORA.value("state_dir", args, env)
    home = env.get("HOME") or "/root"
    settings = RuntimeSettings(
        **fields_of(
            RuntimeSettings,
            values,
            registry_path=values["registry_path"] or os.path.join(state_dir, "runtime", "engines.json"),
            log_dir=values["log_dir"] or os.path.join(state_dir, "runtime", "logs"),
            python=values["python"] or sys.executable,
            weight_cache_dir=values["weight_cache_dir"] or os.path.join(home, ".cache", "huggingface"),
        )
    )
    if settings.restart_max_delay < settings.restart_base_delay:
        raise ConfigError("PATIO_RUNTIME_RESTART_MAX_DELAY", "must not be below PATIO_RUNTIME_RESTART_DELAY")
    low, high = settings.port_range
    if low <= core.port < high:
        raise ConfigError("--runtime-ports", f"must not include Patio's own port {core.port}")
    return settings
