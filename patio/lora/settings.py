"""Settings of the LoRA section."""

import argparse
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from patio.core_settings import CoreSettings
from patio.errors import ConfigError
from patio.options import parse_int, pick, positive_int, positive_seconds, seconds


@dataclass(frozen=True)
class LoraSettings:
    reconcile_interval: float = 30.0  # 0 disables periodic reconciliation
    state_dir: str = "/tmp/patio"
    load_timeout: float = 1800.0  # adapters can be large: 30 minutes
    unload_timeout: float = 60.0
    retry_attempts: int = 5
    retry_deadline: float = 30.0
    models_timeout: float = 5.0
    # Declarative adapters (issue 15): the file, how often it is looked at, where vLLM's
    # filesystem resolver reads, and the bound on adapters Patio keeps track of.
    adapters_file: Optional[str] = None
    adapters_file_interval: float = 5.0
    resolver_dir: Optional[str] = None
    max_adapters: int = 256
    apply_attempts: int = 5
    apply_backoff: float = 1.0  # first retry delay of one adapter; doubles per attempt, capped at 60 s
    # A failed adapter of the file gets a fresh set of attempts this long after it failed (the
    # object may be uploaded after the ConfigMap, the store may be back); 0: only on a change.
    failed_retry_interval: float = 300.0


def add_flags(parser: Any) -> None:
    add = parser.add_argument
    add("--lora-reconcile-interval", help="seconds between LoRA reconciliations; 0 disables (default 30)")
    add(
        "--state-dir",
        help="where Patio keeps its desired adapter set (env PATIO_STATE_DIR; default per user, engine and port: "
        "$TMPDIR/patio-UID/HOST_PORT-LISTENPORT)",
    )
    add("--lora-load-timeout", help="seconds one engine LoRA load may take (default 1800)")
    add("--lora-unload-timeout", help="seconds one engine LoRA unload may take (default 60)")
    add("--lora-retry-attempts", help="attempts for a LoRA call the engine could not have acted on (default 5)")
    add("--lora-retry-deadline", help="seconds all retries of one LoRA call may take (default 30)")
    add("--adapters-file", help="adapters wanted, as JSON or the LoRA syncer's YAML (env PATIO_ADAPTERS_FILE)")
    add("--adapters-file-interval", help="seconds between looks at the adapters file (default 5)")
    add(
        "--resolver-dir",
        help="vLLM's VLLM_LORA_RESOLVER_CACHE_DIR: remote adapters of the file are downloaded there "
        "for lora_filesystem_resolver instead of being loaded (env PATIO_RESOLVER_DIR)",
    )
    add("--max-adapters", help="adapters Patio keeps track of; more are refused (default 256)")
    add("--adapter-apply-attempts", help="attempts to apply one adapter of the file before it is failed (default 5)")
    add("--adapter-apply-backoff", help="seconds before the first retry of one adapter; doubles (default 1)")
    add(
        "--adapter-failed-retry-interval",
        help="seconds after which a failed adapter of the file is tried again; 0: only when the file "
        "changes or the engine comes back (default 300)",
    )


def from_sources(args: argparse.Namespace, env: Mapping[str, str], core: CoreSettings) -> LoraSettings:
    return LoraSettings(
        reconcile_interval=pick(
            args, env, "lora_reconcile_interval", ("PATIO_LORA_RECONCILE_INTERVAL",), 30.0, seconds
        ),
        state_dir=pick(args, env, "state_dir", ("PATIO_STATE_DIR",), "/tmp/patio", lambda s, r: r),
        load_timeout=pick(args, env, "lora_load_timeout", ("PATIO_LORA_LOAD_TIMEOUT",), 1800.0, positive_seconds),
        unload_timeout=pick(args, env, "lora_unload_timeout", ("PATIO_LORA_UNLOAD_TIMEOUT",), 60.0, positive_seconds),
        retry_attempts=pick(args, env, "lora_retry_attempts", ("PATIO_LORA_RETRY_ATTEMPTS",), 5, positive_int),
        retry_deadline=pick(args, env, "lora_retry_deadline", ("PATIO_LORA_RETRY_DEADLINE",), 30.0, seconds),
        adapters_file=pick(args, env, "adapters_file", ("PATIO_ADAPTERS_FILE",), None, _absolute),
        adapters_file_interval=pick(
            args, env, "adapters_file_interval", ("PATIO_ADAPTERS_FILE_INTERVAL",), 5.0, positive_seconds
        ),
        resolver_dir=_resolver_dir(args, env, core),
        max_adapters=pick(
            args,
            env,
            "max_adapters",
            ("PATIO_MAX_ADAPTERS",),
            256,
            lambda s, r: parse_int(s, r, minimum=1, maximum=100000),
        ),
        apply_attempts=pick(
            args,
            env,
            "adapter_apply_attempts",
            ("PATIO_ADAPTER_APPLY_ATTEMPTS",),
            5,
            lambda s, r: parse_int(s, r, minimum=1, maximum=100),
        ),
        apply_backoff=pick(args, env, "adapter_apply_backoff", ("PATIO_ADAPTER_APPLY_BACKOFF",), 1.0, seconds),
        failed_retry_interval=pick(
            args,
            env,
            "adapter_failed_retry_interval",
            ("PATIO_ADAPTER_FAILED_RETRY_INTERVAL",),
            300.0,
            seconds,
        ),
    )


def _absolute(setting: str, raw: str) -> str:
    value = raw.strip()
    if not os.path.isabs(value):
        raise ConfigError(setting, f"must be an absolute path, got {raw!r}")
    return os.path.normpath(value)


def _resolver_dir(args: argparse.Namespace, env: Mapping[str, str], core: CoreSettings) -> Optional[str]:
    # VLLM_LORA_RESOLVER_CACHE_DIR too: the same value the engine container is given.
    value: Optional[str] = pick(
        args, env, "resolver_dir", ("PATIO_RESOLVER_DIR", "VLLM_LORA_RESOLVER_CACHE_DIR"), None, _absolute
    )
    if value is not None and core.engine != "vllm":
        raise ConfigError("--resolver-dir", f"is for vLLM's lora_filesystem_resolver; the engine is {core.engine}")
    return value
