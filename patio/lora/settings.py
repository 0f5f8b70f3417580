"""Settings of the LoRA section."""

import argparse
from dataclasses import dataclass
from typing import Any, Mapping

from patio.config import CoreSettings, pick, positive_int, positive_seconds, seconds


@dataclass(frozen=True)
class LoraSettings:
    reconcile_interval: float = 30.0  # 0 disables periodic reconciliation
    state_dir: str = "/tmp/patio"
    load_timeout: float = 1800.0  # adapters can be large: 30 minutes
    unload_timeout: float = 60.0
    retry_attempts: int = 5
    retry_deadline: float = 30.0
    models_timeout: float = 5.0


def add_flags(parser: Any) -> None:
    add = parser.add_argument
    add("--lora-reconcile-interval", help="seconds between LoRA reconciliations; 0 disables (default 30)")
    add("--state-dir", help="where Patio keeps its desired adapter set (default /tmp/patio)")
    add("--lora-load-timeout", help="seconds one engine LoRA load may take (default 1800)")
    add("--lora-unload-timeout", help="seconds one engine LoRA unload may take (default 60)")
    add("--lora-retry-attempts", help="attempts for a LoRA call the engine could not have acted on (default 5)")
    add("--lora-retry-deadline", help="seconds all retries of one LoRA call may take (default 30)")


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
    )
